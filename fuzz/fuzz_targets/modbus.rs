//! A Modbus device's answer: the response frame (TCP or RTU) as the client reads it from a
//! device that may send anything, then the registers decoded into a value for a resource
//! laid out by EdgeX device-modbus attributes. Nothing may panic or hang; integer values
//! decoded from registers encode back to the same registers.
#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use outpost_device_modbus::codec::{decode_bit, decode_registers, encode_registers};
use outpost_device_modbus::point::{self, Point, Raw, Table};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_modbus::client::Reader as _;

const TABLES: [&str; 4] = [
    "HOLDING_REGISTERS",
    "INPUT_REGISTERS",
    "COILS",
    "DISCRETES_INPUT",
];
const TYPES: [&str; 12] = [
    "Bool", "String", "Uint8", "Uint16", "Uint32", "Uint64", "Int8", "Int16", "Int32", "Int64",
    "Float32", "Float64",
];
const RAWS: [&str; 9] = [
    "", "Int16", "Uint16", "Int32", "Uint32", "Int64", "Uint64", "Float32", "Float64",
];

#[derive(Debug, Arbitrary)]
struct Input {
    rtu: bool,
    /// Answer with the request's transaction id (TCP), so the fuzzer gets past the match.
    echo_header: bool,
    table: u8,
    value_type: u8,
    raw_type: u8,
    address: u16,
    bit: Option<u8>,
    byte_swap: bool,
    word_swap: bool,
    string_registers: u8,
    response: Vec<u8>,
}

static RT: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
});

fn resource(i: &Input) -> serde_json::Value {
    let address = match i.bit {
        Some(b) => format!("{}.{}", i.address, b % 20),
        None => i.address.to_string(),
    };
    serde_json::json!({
        "name": "r",
        "properties": {"valueType": TYPES[usize::from(i.value_type) % TYPES.len()], "readWrite": "RW"},
        "attributes": {
            "primaryTable": TABLES[usize::from(i.table) % TABLES.len()],
            "startingAddress": address,
            "rawType": RAWS[usize::from(i.raw_type) % RAWS.len()],
            "isByteSwap": i.byte_swap,
            "isWordSwap": i.word_swap,
            "stringRegisterSize": i.string_registers,
        },
    })
}

enum Answer {
    Words(Vec<u16>),
    Bits(Vec<bool>),
}

/// Asks for `p`'s registers or bits from a "device" that answers `response`, then hangs up.
async fn ask(i: &Input, p: &Point) -> Option<Answer> {
    let (client, mut device) = tokio::io::duplex(1 << 16);
    let mut ctx = if i.rtu {
        tokio_modbus::client::rtu::attach_slave(client, tokio_modbus::Slave(1))
    } else {
        tokio_modbus::client::tcp::attach(client)
    };
    let mut response = i.response.clone();
    let echo = i.echo_header && !i.rtu;
    let serve = async move {
        let mut req = [0u8; 260];
        let n = device.read(&mut req).await.unwrap_or(0);
        if echo && n >= 2 && response.len() >= 2 {
            response[..2].copy_from_slice(&req[..2]);
        }
        let _ = device.write_all(&response).await;
        // Hanging up ends any read still waiting for more bytes.
        drop(device);
    };
    let n = p.count();
    let call = async {
        match p.table {
            Table::HoldingRegisters => ctx
                .read_holding_registers(p.address, n)
                .await
                .ok()?
                .ok()
                .map(Answer::Words),
            Table::InputRegisters => ctx
                .read_input_registers(p.address, n)
                .await
                .ok()?
                .ok()
                .map(Answer::Words),
            Table::Coils => ctx
                .read_coils(p.address, n)
                .await
                .ok()?
                .ok()
                .map(Answer::Bits),
            Table::DiscreteInputs => ctx
                .read_discrete_inputs(p.address, n)
                .await
                .ok()?
                .ok()
                .map(Answer::Bits),
        }
    };
    let (answer, ()) =
        tokio::time::timeout(Duration::from_secs(5), async { tokio::join!(call, serve) })
            .await
            .expect("the client hung on a closed connection");
    answer
}

fn integer(raw: Raw) -> bool {
    matches!(
        raw,
        Raw::Int16 | Raw::Uint16 | Raw::Int32 | Raw::Uint32 | Raw::Int64 | Raw::Uint64
    )
}

fn decode_and_back(p: &Point, words: &[u16]) {
    if let Ok(v) = decode_registers(p, words)
        && integer(p.raw)
        && let Ok(back) = encode_registers(p, &v)
    {
        assert_eq!(back, words, "{p:?} decoded {v:?}");
    }
}

libfuzzer_sys::fuzz_target!(|i: Input| {
    let Ok(r) = serde_json::from_value(resource(&i)) else {
        return;
    };
    let Ok(p) = point::parse(&r) else {
        return;
    };
    match RT.block_on(ask(&i, &p)) {
        Some(Answer::Words(w)) if w.len() == usize::from(p.count()) => decode_and_back(&p, &w),
        Some(Answer::Bits(b)) if !b.is_empty() => {
            let _ = decode_bit(&p, b[0]);
        }
        _ => {
            // The response bytes as registers, so decoding is exercised whatever the frame.
            let words: Vec<u16> = i
                .response
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .take(usize::from(p.count()))
                .collect();
            decode_and_back(&p, &words);
        }
    }
});
