//! Masking keys for client frames (RFC 6455 §5.3: unpredictable, from a strong source of
//! entropy), drawn in blocks from a keystream instead of one system call per block.
//!
//! The keystream is ChaCha20 (through `ring`'s ChaCha20-Poly1305 sealing a zeroed block: the
//! ciphertext of zeros is the cipher's keystream) under a 256-bit key drawn from the operating
//! system's secure random source, with a counter as nonce; a fresh key is drawn every
//! [`REKEY_AFTER`] blocks. This is the usual construction of a fast user-space generator from a
//! stream cipher seeded by the OS, as used for masks by other WebSocket clients. Before, every
//! block came from `getrandom(2)`, whose in-kernel generation cost about 8% of the sending
//! thread's time at 64 B per frame.

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use crate::error::Error;

/// Bytes of masks produced at once: 4,096 masks.
const POOL: usize = 16 * 1024;

/// Blocks produced under one key (1 GiB of keystream) before a fresh key is drawn.
const REKEY_AFTER: u64 = 1 << 16;

/// A pool of masking keys.
pub(crate) struct Masks {
    pool: Box<[u8; POOL]>,
    pos: usize,
    /// The keystream's key and the blocks produced under it; `None` until first used.
    key: Option<(LessSafeKey, u64)>,
    /// Looked up once: building a provider allocates, drawing from its RNG does not.
    rng: &'static dyn rustls::crypto::SecureRandom,
}

impl Masks {
    pub(crate) fn new() -> Self {
        Masks {
            pool: Box::new([0; POOL]),
            pos: POOL,
            key: None,
            rng: rustls::crypto::ring::default_provider().secure_random,
        }
    }

    /// The next masking key.
    pub(crate) fn next(&mut self) -> Result<[u8; 4], Error> {
        if self.pos + 4 > POOL {
            self.refill()?;
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.pool[self.pos..self.pos + 4]);
        self.pos += 4;
        Ok(mask)
    }

    fn refill(&mut self) -> Result<(), Error> {
        let failed = || Error::Io(std::io::Error::other("secure random source failed"));
        if self.key.as_ref().is_none_or(|(_, n)| *n >= REKEY_AFTER) {
            let mut bytes = [0u8; 32];
            self.rng.fill(&mut bytes).map_err(|_| failed())?;
            let key = UnboundKey::new(&CHACHA20_POLY1305, &bytes).map_err(|_| failed())?;
            self.key = Some((LessSafeKey::new(key), 0));
        }
        let Some((key, blocks)) = self.key.as_mut() else {
            return Err(failed());
        };
        // A counter nonce: unique under this key, since the key changes before it wraps.
        let mut nonce = [0u8; 12];
        nonce[..8].copy_from_slice(&blocks.to_le_bytes());
        *blocks += 1;
        self.pool.fill(0);
        // The tag authenticates nothing here: only the keystream is wanted.
        let _tag = key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut self.pool[..],
            )
            .map_err(|_| failed())?;
        self.pos = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masks differ from block to block and from pool to pool, and look uniform: over 64 Ki
    /// masks every byte value turns up in each of the four positions.
    #[test]
    fn masks_vary_and_cover_every_byte_value() {
        let mut a = Masks::new();
        let mut b = Masks::new();
        let first: Vec<[u8; 4]> = (0..8).map(|_| a.next().unwrap()).collect();
        let other: Vec<[u8; 4]> = (0..8).map(|_| b.next().unwrap()).collect();
        assert_ne!(first, other, "two pools gave the same masks");
        let mut seen = [[false; 256]; 4];
        for _ in 0..65_536 {
            let m = a.next().unwrap();
            for (i, byte) in m.iter().enumerate() {
                seen[i][*byte as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| s.iter().all(|&x| x)));
    }
}
