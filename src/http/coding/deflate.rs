//! A fast DEFLATE encoder (RFC 1951) for the service's own answers, in safe Rust.
//!
//! The answers are JSON: the same keys in every entry, values of fixed shape (dates,
//! numbers), and mailbox certificates of about 1.3 KB that repeat across entries.
//! General-purpose level-1 compressors spend their time hashing every byte of those
//! repeats. This one is built around them:
//!
//! - **Greedy parsing that tries the last two match distances first.** Entries of equal
//!   shape sit at a constant distance, so the key after a date or a number is found
//!   without a hash lookup, and a certificate, once found, is followed to its end in
//!   258-byte matches.
//! - **One hash table of 4-byte prefixes**, newest position only, updated at literals and
//!   at the start and end of matches, never inside them.
//! - **Branch-free output**: a match is one write of up to 48 bits (length code, extra
//!   bits, distance code, extra bits), a literal the same write with empty fields, and the
//!   bit buffer stores 8 bytes at a time. Symbol frequencies are counted while parsing.
//! - **A dynamic Huffman block per call** of [`Deflater::block`] (about 64 KiB of input):
//!   the caller yields to other tasks between blocks, and the codes follow the data.
//!
//! The output is checked by round trips through an independent decoder (flate2's
//! miniz_oxide) in the tests, over real answers and arbitrary bytes (the fuzz target
//! `deflate`).

/// Largest distance back a match may reach (the DEFLATE window).
const WINDOW: usize = 32 * 1024;
/// Longest and shortest match.
const MAX_MATCH: usize = 258;
const MIN_MATCH: usize = 4;
const HASH_BITS: u32 = 15;
/// End of block.
const END_OF_BLOCK: usize = 256;
/// Symbols of the literal/length alphabet and of the distance alphabet.
const LITLEN_SYMBOLS: usize = 286;
const DIST_SYMBOLS: usize = 30;
/// The distance "symbol" of a literal: no code, no bits.
const NO_DIST: u8 = 30;
/// The order in which code-length code lengths are sent (RFC 1951 §3.2.7).
const CLEN_ORDER: [usize; 19] = [
    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
];

/// Extra bits of each literal/length symbol (0 for literals).
const LEN_EXTRA: [u8; 512] = {
    let mut t = [0u8; 512];
    let mut s = 265;
    while s < 285 {
        t[s] = ((s - 261) / 4) as u8;
        s += 1;
    }
    t
};

/// Extra bits of each distance symbol (0 for [`NO_DIST`]).
const DIST_EXTRA: [u8; 32] = {
    let mut t = [0u8; 32];
    let mut s = 4;
    while s < 30 {
        t[s] = ((s - 2) / 2) as u8;
        s += 1;
    }
    t
};

/// One parsed symbol: a literal (`ls` < 256, `ds` = [`NO_DIST`]) or a match (length
/// symbol and its extra value, distance symbol and its extra value).
#[derive(Clone, Copy, Debug)]
struct Sym {
    ls: u16,
    dv: u16,
    ds: u8,
    lv: u8,
}

/// The length symbol (257..=285) and its extra value, for a match length.
#[inline]
fn length_code(len: usize) -> (u16, u8) {
    debug_assert!((3..=MAX_MATCH).contains(&len));
    if len == MAX_MATCH {
        return (285, 0);
    }
    let x = (len - 3) as u32;
    if x < 8 {
        return (257 + x as u16, 0);
    }
    let nb = 31 - x.leading_zeros();
    let sym = 257 + 4 * (nb - 1) + ((x >> (nb - 2)) & 3);
    let extra = nb - 2;
    (sym as u16, (x & ((1 << extra) - 1)) as u8)
}

/// The distance symbol (0..=29) and its extra value.
#[inline]
fn dist_code(dist: usize) -> (u8, u16) {
    debug_assert!((1..=WINDOW).contains(&dist));
    let x = (dist - 1) as u32;
    if x < 4 {
        return (x as u8, 0);
    }
    let nb = 31 - x.leading_zeros();
    let sym = 2 * nb + ((x >> (nb - 1)) & 1);
    let extra = nb - 1;
    (sym as u8, (x & ((1 << extra) - 1)) as u16)
}

/// Huffman code lengths for `freq`, none longer than `limit` bits. Every symbol with a
/// frequency gets a code; the code is complete whenever two or more symbols are used.
fn code_lengths(freq: &[u32], limit: u32) -> Vec<u8> {
    let mut lengths = vec![0u8; freq.len()];
    let mut used: Vec<(u32, usize)> = freq
        .iter()
        .enumerate()
        .filter(|&(_, &f)| f > 0)
        .map(|(s, &f)| (f, s))
        .collect();
    match used.len() {
        0 => return lengths,
        1 => {
            lengths[used[0].1] = 1;
            return lengths;
        }
        _ => {}
    }
    used.sort_unstable();
    // A Huffman tree with two queues over the sorted leaves (van Leeuwen): leaves are
    // 0..n, inner nodes n.. in the order they are made, so a parent comes after its
    // children.
    let n = used.len();
    let mut weight: Vec<u64> = used.iter().map(|&(f, _)| u64::from(f)).collect();
    weight.reserve(n - 1);
    let mut parent = vec![0usize; 2 * n - 1];
    let (mut leaf, mut inner) = (0usize, n);
    for node in n..2 * n - 1 {
        let mut pick = || {
            if leaf < n && (inner >= weight.len() || weight[leaf] <= weight[inner]) {
                leaf += 1;
                leaf - 1
            } else {
                inner += 1;
                inner - 1
            }
        };
        let (a, b) = (pick(), pick());
        weight.push(weight[a] + weight[b]);
        parent[a] = node;
        parent[b] = node;
    }
    let mut depth = vec![0u32; 2 * n - 1];
    for node in (0..2 * n - 2).rev() {
        depth[node] = depth[parent[node]] + 1;
    }
    // Codes per length, capped at `limit`, then the Kraft sum restored by moving the
    // shortest codes below the limit one level down (the method of miniz and zlib).
    let limit = limit as usize;
    let mut count = vec![0u32; limit + 1];
    for &d in &depth[..n] {
        count[(d as usize).min(limit)] += 1;
    }
    let mut kraft: u64 = (1..=limit)
        .map(|l| u64::from(count[l]) << (limit - l))
        .sum();
    while kraft > 1 << limit {
        count[limit] -= 1;
        for l in (1..limit).rev() {
            if count[l] > 0 {
                count[l] -= 1;
                count[l + 1] += 2;
                break;
            }
        }
        kraft -= 1;
    }
    // The most frequent symbols (the end of `used`) get the shortest codes.
    let mut symbols = used.iter().rev().map(|&(_, s)| s);
    for (l, &c) in count.iter().enumerate().skip(1) {
        for _ in 0..c {
            let s = symbols.next().expect("the counts add up to the symbols");
            lengths[s] = l as u8;
        }
    }
    lengths
}

/// Canonical codes for `lengths`, bit-reversed for the LSB-first writer.
fn canonical_codes(lengths: &[u8], codes: &mut [u32]) {
    let mut count = [0u32; 16];
    for &l in lengths {
        count[usize::from(l)] += 1;
    }
    count[0] = 0;
    let mut next = [0u32; 16];
    let mut code = 0u32;
    for bits in 1..16 {
        code = (code + count[bits - 1]) << 1;
        next[bits] = code;
    }
    for (c, &l) in codes.iter_mut().zip(lengths) {
        *c = if l == 0 {
            0
        } else {
            let v = next[usize::from(l)];
            next[usize::from(l)] += 1;
            v.reverse_bits() >> (32 - u32::from(l))
        };
    }
}

/// An LSB-first bit writer that stores 8 bytes at a time into a buffer kept large enough
/// by [`Bits::reserve`].
#[derive(Debug, Default)]
struct Bits {
    out: Vec<u8>,
    /// Bytes complete.
    pos: usize,
    acc: u64,
    /// Bits in `acc` (fewer than 8 between calls).
    n: u32,
}

impl Bits {
    /// Room for `bytes` more bytes of output.
    fn reserve(&mut self, bytes: usize) {
        let need = self.pos + bytes + 8;
        if self.out.len() < need {
            self.out.resize(need.max(self.out.len() * 2), 0);
        }
    }

    /// Appends the low `count` bits of `value` (`count` ≤ 56, room reserved).
    #[inline(always)]
    fn put(&mut self, value: u64, count: u32) {
        self.acc |= value << self.n;
        self.n += count;
        self.out[self.pos..self.pos + 8].copy_from_slice(&self.acc.to_le_bytes());
        let bytes = self.n >> 3;
        self.pos += bytes as usize;
        // `bytes` ≤ 7, so the shift is below 64.
        self.acc >>= bytes * 8;
        self.n &= 7;
    }

    /// Appends whole bytes (the writer is at a byte boundary).
    fn put_bytes(&mut self, bytes: &[u8]) {
        debug_assert_eq!(self.n, 0);
        self.reserve(bytes.len());
        self.out[self.pos..self.pos + bytes.len()].copy_from_slice(bytes);
        self.pos += bytes.len();
    }

    /// Pads to a byte boundary and returns the bytes.
    fn finish(mut self) -> Vec<u8> {
        self.reserve(1);
        if self.n > 0 {
            self.out[self.pos] = self.acc as u8;
            self.pos += 1;
        }
        self.out.truncate(self.pos);
        self.out
    }
}

/// A streaming DEFLATE encoder over one input held whole in memory: matches reach back
/// into everything before the current block (within the window).
#[derive(Debug)]
pub struct Deflater {
    table: Vec<u32>,
    bits: Bits,
    syms: Vec<Sym>,
    lit_freq: [u32; LITLEN_SYMBOLS],
    dist_freq: [u32; DIST_SYMBOLS + 1],
    /// Where the next block starts.
    pos: usize,
    /// The distances of the last two matches.
    rep: [usize; 2],
    done: bool,
}

#[inline(always)]
fn read4(input: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(input[i..i + 4].try_into().expect("4 bytes"))
}

#[inline(always)]
fn hash(v: u32) -> usize {
    (v.wrapping_mul(0x9E37_79B1) >> (32 - HASH_BITS)) as usize
}

/// How many bytes from `a` and `b` on are equal, at most `max` (`b` < `a`).
#[inline(always)]
fn common(input: &[u8], a: usize, b: usize, max: usize) -> usize {
    let (x, y) = (&input[a..a + max], &input[b..b + max]);
    let mut n = 0;
    while n + 8 <= max {
        let d = u64::from_le_bytes(x[n..n + 8].try_into().expect("8 bytes"))
            ^ u64::from_le_bytes(y[n..n + 8].try_into().expect("8 bytes"));
        if d != 0 {
            return n + (d.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    while n < max && x[n] == y[n] {
        n += 1;
    }
    n
}

impl Deflater {
    /// An encoder whose output will be about `capacity` bytes.
    pub fn new(capacity: usize) -> Deflater {
        let mut bits = Bits::default();
        bits.reserve(capacity);
        Deflater {
            table: vec![0; 1 << HASH_BITS],
            bits,
            syms: Vec::new(),
            lit_freq: [0; LITLEN_SYMBOLS],
            dist_freq: [0; DIST_SYMBOLS + 1],
            pos: 0,
            rep: [0; 2],
            done: false,
        }
    }

    /// Appends raw bytes (a container's header) before any block.
    pub fn put_bytes(&mut self, bytes: &[u8]) {
        self.bits.put_bytes(bytes);
    }

    /// How much of the input the blocks so far cover.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Encodes the next block of `input` (the same slice on every call): about `chunk`
    /// bytes from where the last block ended, the final block when it reaches the end.
    /// Returns `true` once the final block is written.
    pub fn block(&mut self, input: &[u8], chunk: usize) -> bool {
        if self.done {
            return true;
        }
        let start = self.pos;
        let limit = start.saturating_add(chunk.max(1)).min(input.len());
        self.syms.clear();
        self.lit_freq = [0; LITLEN_SYMBOLS];
        self.dist_freq = [0; DIST_SYMBOLS + 1];
        self.pos = self.parse(input, start, limit);
        self.done = self.pos >= input.len();
        self.write_block(self.done);
        self.done
    }

    /// Ends the stream and returns the bytes (padded to a byte).
    pub fn finish(self) -> Vec<u8> {
        debug_assert!(self.done, "finish after the final block");
        self.bits.finish()
    }

    #[inline(always)]
    fn literal(&mut self, b: u8) {
        self.syms.push(Sym {
            ls: u16::from(b),
            dv: 0,
            ds: NO_DIST,
            lv: 0,
        });
        self.lit_freq[usize::from(b)] += 1;
    }

    #[inline(always)]
    fn matched(&mut self, len: usize, dist: usize) {
        let (ls, lv) = length_code(len);
        let (ds, dv) = dist_code(dist);
        self.syms.push(Sym { ls, dv, ds, lv });
        self.lit_freq[usize::from(ls)] += 1;
        self.dist_freq[usize::from(ds)] += 1;
    }

    /// Greedy parse of `input[start..]` until a symbol ends at or past `limit`; returns
    /// where the parse stopped (a match may run past `limit`).
    fn parse(&mut self, input: &[u8], start: usize, limit: usize) -> usize {
        let mut i = start;
        // Positions are stored plus one, so 0 means empty.
        while i < limit && i + MIN_MATCH <= input.len() {
            let max = (input.len() - i).min(MAX_MATCH);
            let v = read4(input, i);
            // The last two distances first: the next key after a value of the same shape,
            // or the rest of a certificate.
            let mut found = None;
            for r in 0..2 {
                let d = self.rep[r];
                if d != 0 && d <= i && read4(input, i - d) == v {
                    found = Some((r, d));
                    break;
                }
            }
            let h = hash(v);
            let (len, dist) = if let Some((r, d)) = found {
                if r == 1 {
                    self.rep.swap(0, 1);
                }
                (
                    MIN_MATCH + common(input, i + MIN_MATCH, i - d + MIN_MATCH, max - MIN_MATCH),
                    d,
                )
            } else {
                let cand = self.table[h] as usize;
                let d = i + 1 - cand;
                if cand == 0 || d > WINDOW || read4(input, cand - 1) != v {
                    self.table[h] = i as u32 + 1;
                    self.literal(input[i]);
                    i += 1;
                    continue;
                }
                self.rep = [d, self.rep[0]];
                (
                    MIN_MATCH + common(input, i + MIN_MATCH, i - d + MIN_MATCH, max - MIN_MATCH),
                    d,
                )
            };
            self.table[h] = i as u32 + 1;
            self.matched(len, dist);
            i += len;
            // The end of the match: where the next entry's copy of it will look.
            if i + MIN_MATCH <= input.len() {
                let j = i - 1;
                self.table[hash(read4(input, j))] = j as u32 + 1;
            }
        }
        if i >= limit {
            return i;
        }
        // The last bytes of the input, too short for a match.
        while i < input.len() {
            self.literal(input[i]);
            i += 1;
        }
        i
    }

    /// Writes the parsed symbols as one block with dynamic Huffman codes.
    fn write_block(&mut self, last: bool) {
        let mut lit_freq = self.lit_freq;
        let mut dist_freq: [u32; DIST_SYMBOLS] = self.dist_freq[..DIST_SYMBOLS]
            .try_into()
            .expect("30 symbols");
        lit_freq[END_OF_BLOCK] = 1;
        // Two codes at least in each tree, so every tree is a complete prefix code (zlib
        // refuses incomplete ones).
        if lit_freq.iter().filter(|&&f| f > 0).count() < 2 {
            lit_freq[0] += 1;
        }
        match dist_freq.iter().filter(|&&f| f > 0).count() {
            0 => {
                dist_freq[0] = 1;
                dist_freq[1] = 1;
            }
            1 => {
                let other = usize::from(dist_freq[0] > 0);
                dist_freq[other] = 1;
            }
            _ => {}
        }
        let lit_len = code_lengths(&lit_freq, 15);
        let dist_len = code_lengths(&dist_freq, 15);
        let hlit = 257
            + lit_len[257..]
                .iter()
                .rposition(|&l| l > 0)
                .map_or(0, |p| p + 1);
        let hdist = 1 + dist_len.iter().rposition(|&l| l > 0).unwrap_or(0);

        // The code lengths, run-length coded with 16 (repeat), 17 and 18 (zeros).
        let all: Vec<u8> = lit_len[..hlit]
            .iter()
            .chain(&dist_len[..hdist])
            .copied()
            .collect();
        let mut runs: Vec<(u8, u8)> = Vec::new(); // (symbol, extra value)
        let mut k = 0;
        while k < all.len() {
            let l = all[k];
            let mut run = 1;
            while k + run < all.len() && all[k + run] == l {
                run += 1;
            }
            k += run;
            if l == 0 {
                let mut left = run;
                while left >= 11 {
                    let r = left.min(138);
                    runs.push((18, (r - 11) as u8));
                    left -= r;
                }
                if left >= 3 {
                    runs.push((17, (left - 3) as u8));
                    left = 0;
                }
                runs.extend(std::iter::repeat_n((0, 0), left));
            } else {
                runs.push((l, 0));
                let mut left = run - 1;
                while left >= 3 {
                    let r = left.min(6);
                    runs.push((16, (r - 3) as u8));
                    left -= r;
                }
                runs.extend(std::iter::repeat_n((l, 0), left));
            }
        }
        let mut clen_freq = [0u32; 19];
        for &(s, _) in &runs {
            clen_freq[usize::from(s)] += 1;
        }
        if clen_freq.iter().filter(|&&f| f > 0).count() < 2 {
            let unused = clen_freq.iter().position(|&f| f == 0).expect("19 symbols");
            clen_freq[unused] = 1;
        }
        let clen_len = code_lengths(&clen_freq, 7);
        let mut clen_code = [0u32; 19];
        canonical_codes(&clen_len, &mut clen_code);
        let hclen = 4.max(
            1 + CLEN_ORDER
                .iter()
                .rposition(|&s| clen_len[s] > 0)
                .unwrap_or(0),
        );

        // The header: at most 3 + 14 + 19·3 bits, then 14 bits a run; 6 bytes a symbol.
        self.bits.reserve(64 + 2 * runs.len() + 7 * self.syms.len());
        let b = &mut self.bits;
        b.put(u64::from(last) | (2 << 1), 3); // final?, dynamic Huffman codes
        b.put(
            (hlit - 257) as u64 | ((hdist - 1) as u64) << 5 | ((hclen - 4) as u64) << 10,
            14,
        );
        for &s in &CLEN_ORDER[..hclen] {
            b.put(u64::from(clen_len[s]), 3);
        }
        for &(s, extra) in &runs {
            let s = usize::from(s);
            let extra_bits = match s {
                16 => 2,
                17 => 3,
                18 => 7,
                _ => 0,
            };
            let len = u32::from(clen_len[s]);
            b.put(
                u64::from(clen_code[s]) | u64::from(extra) << len,
                len + extra_bits,
            );
        }

        // The symbols: one write each (code, extra bits, distance code, extra bits).
        let mut lit_code = [0u32; 512];
        let mut lit_bits = [0u8; 512];
        canonical_codes(&lit_len, &mut lit_code[..LITLEN_SYMBOLS]);
        lit_bits[..LITLEN_SYMBOLS].copy_from_slice(&lit_len);
        let mut dcode = [0u32; 32];
        let mut dbits = [0u8; 32];
        canonical_codes(&dist_len, &mut dcode[..DIST_SYMBOLS]);
        dbits[..DIST_SYMBOLS].copy_from_slice(&dist_len);
        for s in &self.syms {
            let ls = usize::from(s.ls) & 511;
            let ds = usize::from(s.ds) & 31;
            let mut v = u64::from(lit_code[ls]);
            let mut n = u32::from(lit_bits[ls]);
            v |= u64::from(s.lv) << n;
            n += u32::from(LEN_EXTRA[ls]);
            v |= u64::from(dcode[ds]) << n;
            n += u32::from(dbits[ds]);
            v |= u64::from(s.dv) << n;
            n += u32::from(DIST_EXTRA[ds]);
            b.put(v, n);
        }
        b.put(
            u64::from(lit_code[END_OF_BLOCK]),
            u32::from(lit_bits[END_OF_BLOCK]),
        );
    }
}

/// `input` as one raw DEFLATE stream, in blocks of about `chunk` bytes.
pub fn deflate(input: &[u8], chunk: usize) -> Vec<u8> {
    let mut d = Deflater::new(input.len() / 8);
    while !d.block(input, chunk) {}
    d.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inflate(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::DeflateDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("a valid DEFLATE stream");
        out
    }

    fn check(input: &[u8]) {
        for chunk in [1, 7, 1000, 64 * 1024, usize::MAX] {
            let z = deflate(input, chunk);
            assert_eq!(inflate(&z), input, "chunk {chunk}, {} bytes", input.len());
        }
    }

    #[test]
    fn round_trips() {
        check(b"");
        check(b"a");
        check(b"ab");
        check(b"aaaa");
        check(&[0u8; 100_000]);
        check(
            b"{\"personidentifikator\":\"01818012345\"}"
                .repeat(3000)
                .as_slice(),
        );
        let mut x = 12345u64;
        let noise: Vec<u8> = (0..200_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        check(&noise);
        // Noise with repeats near and far: distances up to the window and past it.
        let mut mixed = noise[..50_000].to_vec();
        mixed.extend_from_slice(&noise[..40_000]);
        mixed.extend_from_slice(&noise[10_000..12_000].repeat(20));
        check(&mixed);
        // Skewed symbol frequencies force the 15-bit length limit.
        let skewed: Vec<u8> = (0..40u8)
            .flat_map(|i| std::iter::repeat_n(i, 1usize << (i / 2).min(16)))
            .collect();
        check(&skewed);
    }

    #[test]
    fn length_and_distance_codes_match_the_rfc_tables() {
        assert_eq!(length_code(3), (257, 0));
        assert_eq!(length_code(10), (264, 0));
        assert_eq!(length_code(11), (265, 0));
        assert_eq!(length_code(12), (265, 1));
        assert_eq!(length_code(227), (284, 0));
        assert_eq!(length_code(257), (284, 30));
        assert_eq!(length_code(258), (285, 0));
        assert_eq!(LEN_EXTRA[264], 0);
        assert_eq!(LEN_EXTRA[265], 1);
        assert_eq!(LEN_EXTRA[284], 5);
        assert_eq!(LEN_EXTRA[285], 0);
        assert_eq!(dist_code(1), (0, 0));
        assert_eq!(dist_code(4), (3, 0));
        assert_eq!(dist_code(5), (4, 0));
        assert_eq!(dist_code(8), (5, 1));
        assert_eq!(dist_code(24577), (29, 0));
        assert_eq!(dist_code(32768), (29, 8191));
        assert_eq!(DIST_EXTRA[3], 0);
        assert_eq!(DIST_EXTRA[4], 1);
        assert_eq!(DIST_EXTRA[29], 13);
        assert_eq!(DIST_EXTRA[usize::from(NO_DIST)], 0);
    }

    #[test]
    fn code_lengths_respect_the_limit_and_stay_complete() {
        let freq: Vec<u32> = (0..30).map(|i| 1u32 << i).collect();
        let l = code_lengths(&freq, 7);
        assert!(l.iter().all(|&x| (1..=7).contains(&x)), "{l:?}");
        let kraft: f64 = l.iter().map(|&x| 0.5f64.powi(i32::from(x))).sum();
        assert!((kraft - 1.0).abs() < 1e-12, "{kraft}");
    }
}
