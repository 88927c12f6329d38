//! The AEAD behind TLS records, alone: how fast ring and aws-lc-rs seal 16 KiB
//! records (TLS's largest) with AES-GCM on this CPU, one core. Conduit seals with
//! ring (`proto/src/suite.rs`); this shows why, on the machine at hand.

use std::time::{Duration, Instant};

use anyhow::anyhow;
use serde_json::{Value, json};

/// TLS's largest record payload.
const RECORD: usize = 16 * 1024;

/// Seals records for about `seconds` per library and key size; prints GB/s each.
pub(crate) fn run(seconds: f64) -> anyhow::Result<Value> {
    let each = Duration::from_secs_f64(seconds.max(0.1));
    let mut out = serde_json::Map::new();
    for (name, key_len) in [("aes_128_gcm", 16), ("aes_256_gcm", 32)] {
        out.insert(
            format!("ring_{name}_gb_per_s"),
            json!(round(rate(each, &mut ring_sealer(key_len)?)?)),
        );
        out.insert(
            format!("aws_lc_{name}_gb_per_s"),
            json!(round(rate(each, &mut aws_lc_sealer(key_len)?)?)),
        );
    }
    Ok(Value::Object(out))
}

fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Seals record after record with `seal(counter, buf)` for `each`: GB/s.
fn rate(
    each: Duration,
    seal: &mut dyn FnMut(u64, &mut [u8]) -> anyhow::Result<()>,
) -> anyhow::Result<f64> {
    let mut buf = vec![0x5a_u8; RECORD];
    // Warm up: key schedule, caches, clock.
    for i in 0..64 {
        seal(i, &mut buf)?;
    }
    let start = Instant::now();
    let mut sealed = 0u64;
    while start.elapsed() < each {
        for _ in 0..256 {
            sealed += 1;
            seal(sealed, &mut buf)?;
        }
    }
    Ok((sealed as f64 * RECORD as f64) / start.elapsed().as_secs_f64() / 1e9)
}

fn nonce(counter: u64) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    n
}

type Sealer = Box<dyn FnMut(u64, &mut [u8]) -> anyhow::Result<()>>;

fn ring_sealer(key_len: usize) -> anyhow::Result<Sealer> {
    use ring::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let alg = if key_len == 16 {
        &AES_128_GCM
    } else {
        &AES_256_GCM
    };
    let key = LessSafeKey::new(
        UnboundKey::new(alg, &vec![7u8; key_len]).map_err(|_| anyhow!("ring key"))?,
    );
    Ok(Box::new(move |i, buf| {
        key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce(i)), Aad::empty(), buf)
            .map(drop)
            .map_err(|_| anyhow!("ring seal"))
    }))
}

fn aws_lc_sealer(key_len: usize) -> anyhow::Result<Sealer> {
    use aws_lc_rs::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let alg = if key_len == 16 {
        &AES_128_GCM
    } else {
        &AES_256_GCM
    };
    let key = LessSafeKey::new(
        UnboundKey::new(alg, &vec![7u8; key_len]).map_err(|_| anyhow!("aws-lc key"))?,
    );
    Ok(Box::new(move |i, buf| {
        key.seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce(i)), Aad::empty(), buf)
            .map(drop)
            .map_err(|_| anyhow!("aws-lc seal"))
    }))
}
