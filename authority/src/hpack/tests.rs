//! The decoder against RFC 7541's examples and, differentially, against `loona-hpack`, an
//! independent implementation with its own copy of the tables.

use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn decode_all(decoder: &mut Decoder, block: &[u8]) -> Result<Fields, HpackError> {
    let mut out = Vec::new();
    decoder.decode(block, |n, v| out.push((n.to_vec(), v.to_vec())))?;
    Ok(out)
}

fn pairs(list: &[(&str, &str)]) -> Fields {
    list.iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// The canonical codes the lengths stand for: (code, length) per symbol.
fn codes() -> Vec<(u32, u32)> {
    let mut order: Vec<usize> = (0..257).collect();
    order.sort_by_key(|&s| (CODE_LENGTHS[s], s));
    let mut codes = vec![(0, 0); 257];
    let (mut code, mut prev) = (0u32, u32::from(CODE_LENGTHS[order[0]]));
    for (k, &s) in order.iter().enumerate() {
        let len = u32::from(CODE_LENGTHS[s]);
        if k > 0 {
            code = (code + 1) << (len - prev);
        }
        prev = len;
        codes[s] = (code, len);
    }
    codes
}

fn huffman_encode(codes: &[(u32, u32)], s: &[u8]) -> Vec<u8> {
    let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
    for &c in s {
        let (code, len) = codes[usize::from(c)];
        acc = acc << len | u64::from(code);
        bits += len;
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
    }
    out
}

#[test]
fn rfc7541_c4_requests_with_huffman_and_the_dynamic_table() {
    let mut decoder = Decoder::default();
    let first = [
        0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab, 0x90,
        0xf4, 0xff,
    ];
    let second = [
        0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
    ];
    let third = [
        0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f, 0x89,
        0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
    ];
    let base = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let mut want = base.to_vec();
    want.push((":authority", "www.example.com"));
    assert_eq!(decode_all(&mut decoder, &first).unwrap(), pairs(&want));
    want.push(("cache-control", "no-cache"));
    assert_eq!(decode_all(&mut decoder, &second).unwrap(), pairs(&want));
    let want = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        (":authority", "www.example.com"),
        ("custom-key", "custom-value"),
    ];
    assert_eq!(decode_all(&mut decoder, &third).unwrap(), pairs(&want));
    // RFC 7541 C.4.3: three entries, 164 bytes.
    assert_eq!(decoder.size, 164);
}

#[test]
fn the_code_lengths_make_the_rfc_code() {
    let codes = codes();
    // Spot checks against RFC 7541 Appendix B.
    assert_eq!(codes[usize::from(b'0')], (0x0, 5));
    assert_eq!(codes[usize::from(b'/')], (0x18, 6));
    assert_eq!(codes[usize::from(b'A')], (0x21, 6));
    assert_eq!(codes[usize::from(b'~')], (0x1ffd, 13));
    assert_eq!(codes[0], (0x1ff8, 13));
    assert_eq!(codes[256], (0x3fff_ffff, 30));
    // Every byte value round-trips through loona-hpack's own table and through ours.
    let all: Vec<u8> = (0..=255).collect();
    let coded = huffman_encode(&codes, &all);
    let mut mine = Vec::new();
    huffman_decode(&coded, &mut mine).unwrap();
    assert_eq!(mine, all);
    let mut block = vec![0x00, 0x01, b'x'];
    encode_integer(&mut block, 7, coded.len());
    block[3] |= 0x80;
    block.extend(&coded);
    let theirs = loona_hpack::Decoder::new().decode(&block).unwrap();
    assert_eq!(theirs[0].1, all);
}

#[test]
fn the_static_table_matches_an_independent_one() {
    let mut theirs = loona_hpack::Decoder::new();
    let mut mine = Decoder::default();
    for i in 1..=61u8 {
        assert_eq!(
            decode_all(&mut mine, &[0x80 | i]).unwrap(),
            theirs.decode(&[0x80 | i]).unwrap(),
            "index {i}"
        );
    }
}

#[test]
fn bad_huffman_is_refused() {
    let codes = codes();
    let mut out = Vec::new();
    // EOS inside the string.
    let eos = [0xff, 0xff, 0xff, 0xfc];
    assert_eq!(huffman_decode(&eos, &mut out), Err(HpackError::BadHuffman));
    // Padding of 8 bits.
    let mut padded = huffman_encode(&codes, b"a");
    padded.push(0xff);
    assert_eq!(
        huffman_decode(&padded, &mut out),
        Err(HpackError::BadHuffman)
    );
    // Padding that is not ones: 'a' is 00011, then 000.
    assert_eq!(
        huffman_decode(&[0x18], &mut out),
        Err(HpackError::BadHuffman)
    );
}

#[test]
fn malformed_blocks_are_errors() {
    let cases: [(&[u8], HpackError); 7] = [
        (&[0x80], HpackError::BadIndex(0)),
        (&[0xbe], HpackError::BadIndex(62)),
        (&[0x01, 0x05, b'a'], HpackError::Truncated),
        (&[0x41], HpackError::Truncated),
        (
            &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            HpackError::IntegerOverflow,
        ),
        (
            &[0x3f, 0xe2, 0x1f],
            HpackError::TableSizeAboveLimit {
                size: 31 + 0x62 + (0x1f << 7),
                limit: 4096,
            },
        ),
        (&[0x82, 0x20], HpackError::LateTableSizeUpdate),
    ];
    for (block, want) in cases {
        let got = decode_all(&mut Decoder::default(), block);
        assert_eq!(got, Err(want), "{block:x?}");
    }
}

/// Random header blocks of every representation, decoded by both implementations in sequence on
/// one connection each: the same fields, or an error from both.
#[test]
fn random_blocks_decode_like_loona_hpack() {
    let codes = codes();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    let mut mine = Decoder::default();
    let mut theirs = loona_hpack::Decoder::new();
    let mut agreed_errors = 0;
    for _ in 0..1000 {
        let mut block = Vec::new();
        if next(10) == 0 {
            let size = next(4097) as usize;
            encode_integer(&mut block, 5, size);
            block[0] |= 0x20;
        }
        for _ in 0..1 + next(8) {
            let string = |block: &mut Vec<u8>, next: &mut dyn FnMut(u64) -> u64| {
                let longest = if next(4) == 0 { 600 } else { 20 };
                let len = next(longest) as usize;
                let s: Vec<u8> = (0..len).map(|_| next(256) as u8).collect();
                if next(2) == 0 {
                    let coded = huffman_encode(&codes, &s);
                    let at = block.len();
                    encode_integer(block, 7, coded.len());
                    block[at] |= 0x80;
                    block.extend(coded);
                } else {
                    encode_integer(block, 7, s.len());
                    block.extend(s);
                }
            };
            let (first, prefix) = match next(6) {
                0 => {
                    let at = block.len();
                    encode_integer(&mut block, 7, 1 + next(70) as usize);
                    block[at] |= 0x80;
                    continue;
                }
                1 | 2 => (0x40, 6),
                3 => (0x10, 4),
                _ => (0x00, 4),
            };
            let at = block.len();
            let name_index = if next(2) == 0 {
                0
            } else {
                1 + next(70) as usize
            };
            encode_integer(&mut block, prefix, name_index);
            block[at] |= first;
            if name_index == 0 {
                string(&mut block, &mut next);
            }
            string(&mut block, &mut next);
        }
        let got = decode_all(&mut mine, &block);
        let want = theirs.decode(&block);
        match (got, want) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(_), Err(_)) => {
                agreed_errors += 1;
                mine = Decoder::default();
                theirs = loona_hpack::Decoder::new();
            }
            (got, want) => panic!("block {block:x?}: ours {got:?}, loona {want:?}"),
        }
    }
    // Out-of-range dynamic indexes make some blocks fail; most must decode.
    assert!(agreed_errors < 500, "{agreed_errors} errors");
}

#[test]
fn paths_and_empty_are_refused_and_hosts_pass() {
    for refused in [
        &b"/run/berth/berth.sock"[..],
        b"%2Frun%2Fberth%2Fberth.sock",
        b"",
        b"unix:///run/berth.sock",
    ] {
        assert!(
            !authority_is_acceptable(refused),
            "{}",
            String::from_utf8_lossy(refused)
        );
    }
    for accepted in [&b"localhost"[..], b"localhost:50051", b"[::1]:80", b"berth"] {
        assert!(
            authority_is_acceptable(accepted),
            "{}",
            String::from_utf8_lossy(accepted)
        );
    }
}

#[test]
fn literals_decode_back() {
    let long = vec![b'v'; 300];
    let mut block = Vec::new();
    encode_literal(&mut block, b":authority", b"localhost");
    encode_literal(&mut block, b"x-long", &long);
    let want = vec![
        (b":authority".to_vec(), b"localhost".to_vec()),
        (b"x-long".to_vec(), long),
    ];
    assert_eq!(decode_all(&mut Decoder::default(), &block).unwrap(), want);
    assert_eq!(loona_hpack::Decoder::new().decode(&block).unwrap(), want);
}
