//! The HPACK side: which authorities pass, and the literal encoding of re-encoded blocks.
//!
//! Decoding uses `loona-hpack` (MIT; the maintained continuation of the `hpack` crate): it handles
//! Huffman strings, the dynamic table and its size updates, bounds every read and reports
//! malformed input as errors. h2's own codec is private to h2. Encoding needs no crate: a block is
//! re-encoded as literals without indexing and without Huffman coding, which is a few lines and
//! keeps the server's dynamic table out of play.

/// What a refused authority becomes. gRPC servers ignore the authority; `localhost` is what
/// grpc-go sends over unix sockets today.
pub(crate) const REPLACEMENT: &[u8] = b"localhost";

/// The largest dynamic table the client may use: SETTINGS_HEADER_TABLE_SIZE's default, which hyper
/// (and so tonic) keeps on the server side.
pub(crate) const MAX_DYNAMIC_TABLE: usize = 4096;

/// Whether h2 takes this `:authority` as it is: h2 parses it with `http::uri::Authority`, which
/// refuses paths, percent-encoded paths and the empty string. Checking with the same parser keeps
/// us from rewriting anything h2 would have served.
pub(crate) fn authority_is_acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// Appends one header as "literal header field without indexing — new name" (RFC 7541 6.2.2).
pub(crate) fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    encode_string(out, name);
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// RFC 7541 5.1: `first` carries the bits above the `prefix`-bit integer in the first octet.
fn encode_integer(out: &mut Vec<u8>, first: u8, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn literals_decode_back_with_loona() {
        let long = vec![b'v'; 300];
        let mut block = Vec::new();
        encode_literal(&mut block, b":authority", b"localhost");
        encode_literal(&mut block, b"x-long", &long);
        let mut decoder = loona_hpack::Decoder::new();
        let headers = decoder.decode(&block).unwrap();
        assert_eq!(
            headers,
            vec![
                (b":authority".to_vec(), b"localhost".to_vec()),
                (b"x-long".to_vec(), long)
            ]
        );
    }
}
