//! HPACK (RFC 7541): the decoder that follows the client's header compression, which
//! `:authority` values pass, and the literal encoding of re-encoded blocks.
//!
//! Our own decoder rather than a crate: h2's codec is private to h2, and the `hpack` crate family
//! (`hpack`, `fluke-hpack`, `loona-hpack`) builds a 257-entry hash map for every Huffman-coded
//! string and walks it bit by bit with two hash look-ups per bit, which measured at about 0.4 ms
//! per gRPC request in a debug berthd. HPACK's Huffman code is canonical, so a table of the 257
//! code lengths is all a fast decoder needs. Encoding needs no table at all: re-encoded blocks are
//! literals without indexing and without Huffman coding, which keeps the server's dynamic table
//! out of play.

use std::collections::VecDeque;

/// What a refused authority becomes. gRPC servers ignore the authority; `localhost` is what
/// grpc-go and grpcio send over unix sockets today.
pub(crate) const REPLACEMENT: &[u8] = b"localhost";

/// The largest dynamic table a client may use unless the server says otherwise: the default
/// SETTINGS_HEADER_TABLE_SIZE, which hyper (and so tonic) keeps on the server side.
pub const DEFAULT_TABLE_SIZE: usize = 4096;

/// Whether h2 takes this `:authority` as it is: h2 parses it with `http::uri::Authority`, which
/// refuses paths, percent-encoded paths and the empty string. Checking with the same parser keeps
/// us from rewriting anything h2 would have served.
pub(crate) fn authority_is_acceptable(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HpackError {
    #[error("header block ends inside a field")]
    Truncated,
    #[error("integer too large in header block")]
    IntegerOverflow,
    #[error("header index {0} is outside the static and dynamic tables")]
    BadIndex(usize),
    #[error("dynamic table size update to {size} exceeds the limit {limit}")]
    TableSizeAboveLimit { size: usize, limit: usize },
    #[error("dynamic table size update after a header field")]
    LateTableSizeUpdate,
    #[error("invalid Huffman-coded string")]
    BadHuffman,
}

/// The connection's decoding state: the dynamic table the encoder on the other side fills.
#[derive(Debug)]
pub struct Decoder {
    /// Newest first, as HPACK indexes it.
    entries: VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max_size: usize,
    /// The SETTINGS_HEADER_TABLE_SIZE the peer was given: size updates may not exceed it.
    limit: usize,
    name: Vec<u8>,
    value: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder::new(DEFAULT_TABLE_SIZE)
    }
}

impl Decoder {
    pub fn new(limit: usize) -> Self {
        Decoder {
            entries: VecDeque::new(),
            size: 0,
            max_size: limit,
            limit,
            name: Vec::new(),
            value: Vec::new(),
        }
    }

    /// Decodes one complete header block, handing each field to `emit` in order.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut emit: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut rest = block;
        let mut fields = 0usize;
        while let Some(&first) = rest.first() {
            if first & 0x80 != 0 {
                let index = integer(&mut rest, 7)?;
                let (name, value) = self.entry(index)?;
                emit(name, value);
            } else if first & 0xe0 == 0x20 {
                if fields > 0 {
                    return Err(HpackError::LateTableSizeUpdate);
                }
                let size = integer(&mut rest, 5)?;
                if size > self.limit {
                    return Err(HpackError::TableSizeAboveLimit {
                        size,
                        limit: self.limit,
                    });
                }
                self.max_size = size;
                self.evict(0);
                continue;
            } else {
                // Literal: with incremental indexing (01), without (0000) or never indexed (0001).
                let indexing = first & 0xc0 == 0x40;
                let prefix = if indexing { 6 } else { 4 };
                let name_index = integer(&mut rest, prefix)?;
                let mut name = std::mem::take(&mut self.name);
                let mut value = std::mem::take(&mut self.value);
                name.clear();
                value.clear();
                let read = if name_index == 0 {
                    string(&mut rest, &mut name)
                } else {
                    self.entry(name_index)
                        .map(|(n, _)| name.extend_from_slice(n))
                }
                .and_then(|()| string(&mut rest, &mut value));
                if read.is_ok() {
                    emit(&name, &value);
                    if indexing {
                        self.insert(&name, &value);
                    }
                }
                self.name = name;
                self.value = value;
                read?;
            }
            fields += 1;
        }
        Ok(())
    }

    fn entry(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        if let Some(&(name, value)) = index.checked_sub(1).and_then(|i| STATIC_TABLE.get(i)) {
            return Ok((name.as_bytes(), value.as_bytes()));
        }
        index
            .checked_sub(STATIC_TABLE.len() + 1)
            .and_then(|i| self.entries.get(i))
            .map(|(n, v)| (&n[..], &v[..]))
            .ok_or(HpackError::BadIndex(index))
    }

    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = entry_size(name, value);
        if size > self.max_size {
            // RFC 7541 4.4: an entry larger than the table empties it and is not added.
            self.entries.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.entries.push_front((name.to_vec(), value.to_vec()));
        self.size += size;
    }

    /// Evicts the oldest entries until `room` more bytes fit.
    fn evict(&mut self, room: usize) {
        while self.size + room > self.max_size {
            match self.entries.pop_back() {
                Some((n, v)) => self.size -= entry_size(&n, &v),
                None => break,
            }
        }
    }
}

fn entry_size(name: &[u8], value: &[u8]) -> usize {
    name.len() + value.len() + 32
}

/// RFC 7541 5.1, consuming the integer from `rest`.
fn integer(rest: &mut &[u8], prefix: u32) -> Result<usize, HpackError> {
    let (&first, mut tail) = rest.split_first().ok_or(HpackError::Truncated)?;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value == max {
        let mut shift = 0u32;
        loop {
            let (&byte, more) = tail.split_first().ok_or(HpackError::Truncated)?;
            tail = more;
            // Four continuation octets reach 2^28, more than any header needs.
            if shift > 21 {
                return Err(HpackError::IntegerOverflow);
            }
            value += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
    }
    *rest = tail;
    Ok(value)
}

/// RFC 7541 5.2: appends the string at the start of `rest` to `out`, consuming it.
fn string(rest: &mut &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let huffman = rest.first().is_some_and(|b| b & 0x80 != 0);
    let len = integer(rest, 7)?;
    if len > rest.len() {
        return Err(HpackError::Truncated);
    }
    let (bytes, tail) = rest.split_at(len);
    *rest = tail;
    if huffman {
        huffman_decode(bytes, out)
    } else {
        out.extend_from_slice(bytes);
        Ok(())
    }
}

/// The canonical Huffman code of RFC 7541 Appendix B, given by its code lengths: for each length,
/// the first code, how many codes have it, and where its symbols start in `symbols`.
struct Canonical {
    first: [u32; 31],
    count: [u32; 31],
    offset: [usize; 31],
    symbols: [u16; 257],
}

const EOS: u16 = 256;

const HUFFMAN: Canonical = canonical(&CODE_LENGTHS);

const fn canonical(lengths: &[u8; 257]) -> Canonical {
    let mut count = [0u32; 31];
    let mut i = 0;
    while i < lengths.len() {
        count[lengths[i] as usize] += 1;
        i += 1;
    }
    let mut first = [0u32; 31];
    let mut offset = [0usize; 31];
    let (mut code, mut at, mut len) = (0u32, 0usize, 1);
    while len < 31 {
        first[len] = code;
        offset[len] = at;
        code = (code + count[len]) << 1;
        at += count[len] as usize;
        len += 1;
    }
    let mut next = offset;
    let mut symbols = [0u16; 257];
    let mut symbol = 0;
    while symbol < lengths.len() {
        let len = lengths[symbol] as usize;
        symbols[next[len]] = symbol as u16;
        next[len] += 1;
        symbol += 1;
    }
    Canonical {
        first,
        count,
        offset,
        symbols,
    }
}

fn huffman_decode(bytes: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let (mut code, mut len) = (0u32, 0usize);
    for &byte in bytes {
        for bit in (0..8).rev() {
            code = code << 1 | u32::from(byte >> bit & 1);
            len += 1;
            let nth = code.wrapping_sub(HUFFMAN.first[len]);
            if nth < HUFFMAN.count[len] {
                match HUFFMAN.symbols[HUFFMAN.offset[len] + nth as usize] {
                    EOS => return Err(HpackError::BadHuffman),
                    symbol => out.push(symbol as u8),
                }
                code = 0;
                len = 0;
            } else if len == 30 {
                return Err(HpackError::BadHuffman);
            }
        }
    }
    // RFC 7541 5.2: at most 7 bits of padding, the most significant bits of EOS (all ones).
    if len > 7 || code != (1 << len) - 1 {
        return Err(HpackError::BadHuffman);
    }
    Ok(())
}

/// Appends one header as "literal header field without indexing, new name" (RFC 7541 6.2.2).
pub fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    encode_string(out, name);
    encode_string(out, value);
}

fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, 7, s.len());
    out.extend_from_slice(s);
}

/// RFC 7541 5.1, with the bits above the prefix left zero.
fn encode_integer(out: &mut Vec<u8>, prefix: u32, value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(value as u8);
        return;
    }
    out.push(max as u8);
    let mut rest = value - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// RFC 7541 Appendix A.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// RFC 7541 Appendix B: the length in bits of the Huffman code of each symbol, 0-255 and EOS.
const CODE_LENGTHS: [u8; 257] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26, 30,
];

#[cfg(test)]
mod tests;
