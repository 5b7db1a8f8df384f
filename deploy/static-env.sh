# Sourced by deploy/build-image.sh and scripts/test.sh: the environment in which cargo builds
# statically linked binaries for x86-64 Linux, the kind the container image holds (FROM
# scratch). glibc is linked in (crt-static). SQLCipher's build asks for OpenSSL's libcrypto
# as a shared library; given a directory holding only its static archive (Debian's
# libssl-dev), the linker takes that. Build scripts and proc macros, which run on the
# build machine, are built as usual (`--target` keeps the flags off them).
crypto="$(gcc -print-file-name=libcrypto.a)"
if [[ ! -f "$crypto" ]]; then
  echo "libcrypto.a not found: install libssl-dev (scripts/setup.sh)" >&2
  exit 1
fi
mkdir -p target/static-libcrypto
cp -u "$crypto" target/static-libcrypto/
export CARGO_BUILD_TARGET=x86_64-unknown-linux-gnu
export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static"
export OPENSSL_LIB_DIR="$PWD/target/static-libcrypto" OPENSSL_INCLUDE_DIR=/usr/include
unset crypto
