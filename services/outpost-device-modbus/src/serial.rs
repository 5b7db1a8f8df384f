//! A serial line for Modbus RTU: the device file opened non-blocking, set to raw mode with
//! the line's speed, data bits, stop bits and parity, and driven by the tokio reactor.

use std::fs::File;
use std::io::{self, Read as _, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, OptionalActions, QueueSelector, SpecialCodeIndex};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::endpoint::{Parity, Serial};

/// An open serial line.
#[derive(Debug)]
pub struct SerialStream {
    fd: AsyncFd<File>,
}

/// Opens and configures the line.
pub fn open(s: &Serial) -> io::Result<SerialStream> {
    let fd = rustix::fs::open(
        s.path.as_str(),
        OFlags::RDWR | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut t = termios::tcgetattr(&fd)?;
    t.make_raw();
    t.set_speed(s.baud_rate)?;
    let mut c = t.control_modes;
    c.remove(
        ControlModes::CSIZE | ControlModes::CSTOPB | ControlModes::PARENB | ControlModes::PARODD,
    );
    c.insert(match s.data_bits {
        5 => ControlModes::CS5,
        6 => ControlModes::CS6,
        7 => ControlModes::CS7,
        _ => ControlModes::CS8,
    });
    if s.stop_bits == 2 {
        c.insert(ControlModes::CSTOPB);
    }
    match s.parity {
        Parity::None => {}
        Parity::Even => c.insert(ControlModes::PARENB),
        Parity::Odd => c.insert(ControlModes::PARENB | ControlModes::PARODD),
    }
    // Ignore modem lines; enable the receiver.
    c.insert(ControlModes::CLOCAL | ControlModes::CREAD);
    t.control_modes = c;
    // A read waits for at least one byte: with the descriptor non-blocking, no data is
    // EAGAIN (readiness is awaited), never a 0-byte read that would look like the end.
    t.special_codes[SpecialCodeIndex::VMIN] = 1;
    t.special_codes[SpecialCodeIndex::VTIME] = 0;
    termios::tcsetattr(&fd, OptionalActions::Now, &t)?;
    // Nothing from before this connection belongs to it.
    termios::tcflush(&fd, QueueSelector::IOFlush)?;
    // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may hand out a descriptor
    // it does not own; a `File` owns its descriptor and keeps it open until it is dropped
    // together with the `AsyncFd`, which is what its unsafe successor `register` requires.
    #[allow(deprecated)]
    let fd = AsyncFd::new(File::from(fd))?;
    Ok(SerialStream { fd })
}

impl AsyncRead for SerialStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|f| {
                let mut file = f.get_ref();
                file.read(unfilled)
            }) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for SerialStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|f| {
                let mut file = f.get_ref();
                file.write(data)
            }) {
                Ok(r) => return Poll::Ready(r),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
