//! CRC-32C (Castagnoli), the checksum of the write-ahead log's records and
//! of snapshot files: the polynomial iSCSI, ext4 and etcd's WAL use, chosen
//! for its better detection of the burst errors storage makes.
//!
//! Table-driven, eight bytes per step ("slicing by 8"): about 1 GB/s here,
//! far above what one fsync per loop turn lets the log write. Records are
//! chained: each record's checksum starts from the previous one's (see
//! [`extend`]), so a record copied from elsewhere in the log fails.

/// The reflected Castagnoli polynomial.
const POLY: u32 = 0x82f6_3b78;

/// `TABLES[k][b]`: the CRC of byte `b` followed by `k` zero bytes.
const TABLES: [[u32; 256]; 8] = {
    let mut t = [[0u32; 256]; 8];
    let mut b = 0;
    while b < 256 {
        let mut crc = b as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            bit += 1;
        }
        t[0][b] = crc;
        b += 1;
    }
    let mut k = 1;
    while k < 8 {
        let mut b = 0;
        while b < 256 {
            let prev = t[k - 1][b];
            t[k][b] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            b += 1;
        }
        k += 1;
    }
    t
};

/// The CRC-32C of `bytes`.
pub fn checksum(bytes: &[u8]) -> u32 {
    extend(0, bytes)
}

/// The CRC-32C of the bytes `crc` was computed over followed by `bytes`:
/// `extend(checksum(a), b) == checksum(a ++ b)`.
pub fn extend(crc: u32, bytes: &[u8]) -> u32 {
    let mut crc = !crc;
    let mut words = bytes.chunks_exact(8);
    for w in &mut words {
        let lo = crc ^ u32::from_le_bytes([w[0], w[1], w[2], w[3]]);
        crc = TABLES[7][(lo & 0xff) as usize]
            ^ TABLES[6][((lo >> 8) & 0xff) as usize]
            ^ TABLES[5][((lo >> 16) & 0xff) as usize]
            ^ TABLES[4][(lo >> 24) as usize]
            ^ TABLES[3][w[4] as usize]
            ^ TABLES[2][w[5] as usize]
            ^ TABLES[1][w[6] as usize]
            ^ TABLES[0][w[7] as usize];
    }
    for &b in words.remainder() {
        crc = (crc >> 8) ^ TABLES[0][((crc ^ b as u32) & 0xff) as usize];
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bit by bit, straight from the definition.
    fn reference(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= b as u32;
            for _ in 0..8 {
                crc = if crc & 1 != 0 { (crc >> 1) ^ POLY } else { crc >> 1 };
            }
        }
        !crc
    }

    #[test]
    fn known_check_values() {
        // The catalogue's check value of CRC-32C, and RFC 3720's vectors.
        assert_eq!(checksum(b"123456789"), 0xe306_9283);
        assert_eq!(checksum(&[0u8; 32]), 0x8a91_36aa);
        assert_eq!(checksum(&[0xffu8; 32]), 0x62a8_ab43);
        let ascending: Vec<u8> = (0..32).collect();
        assert_eq!(checksum(&ascending), 0x46dd_794e);
        assert_eq!(checksum(b""), 0);
    }

    #[test]
    fn matches_the_bitwise_definition_at_every_length_and_split() {
        let bytes: Vec<u8> = (0..200u32).map(|i| (i * 37 + 11) as u8).collect();
        for len in 0..bytes.len() {
            let whole = checksum(&bytes[..len]);
            assert_eq!(whole, reference(&bytes[..len]), "length {len}");
            let split = len / 3;
            assert_eq!(extend(checksum(&bytes[..split]), &bytes[split..len]), whole);
        }
    }
}
