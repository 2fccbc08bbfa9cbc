//! JSON tensor data straight into typed buffers and back.
//!
//! Request data (`[[1, 2], [3, 4]]` or `[1, 2, 3, 4]`) is parsed from its text straight into the
//! typed vector for the input's datatype, with no intermediate `serde_json::Value` tree and no
//! per-element allocation; nesting is flattened row-major and, when asked, its shape is recorded
//! (for `/score`, whose requests carry no shape). Errors name the offending value and its offset.

use std::fmt;

use half::f16;
use serde::Serialize;
use serde::ser::{SerializeSeq, Serializer};
use sluice_core::{DataType, TensorData};

/// Records the extent of each nesting level and checks that the nesting is rectangular.
#[derive(Debug, Default)]
pub struct ShapeTracker {
    dims: Vec<Option<i64>>,
    /// Depth at which scalars were found; all scalars must sit at the same depth.
    leaf_depth: Option<usize>,
}

impl ShapeTracker {
    fn enter(&mut self, depth: usize, len: i64) -> Result<(), String> {
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            None => self.dims[depth] = Some(len),
            Some(d) if d == len => {}
            Some(d) => return Err(format!("ragged nested array: rows of length {d} and {len} at depth {depth}")),
        }
        Ok(())
    }

    fn leaf(&mut self, depth: usize) -> Result<(), String> {
        match self.leaf_depth {
            None => self.leaf_depth = Some(depth),
            Some(d) if d == depth => {}
            Some(_) => return Err("ragged nested array: numbers and arrays mixed at one depth".into()),
        }
        Ok(())
    }

    /// The shape of what was read.
    pub fn shape(&self) -> Vec<i64> {
        let rank = self.leaf_depth.unwrap_or(self.dims.len());
        (0..rank).map(|d| self.dims.get(d).copied().flatten().unwrap_or(0)).collect()
    }
}

/// Why JSON tensor data could not be read; names the offending value and its byte offset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DataError(String);

/// Deepest nesting accepted: far beyond any real tensor, and it keeps a hostile `[[[[...` from
/// exhausting the stack.
const MAX_DEPTH: usize = 32;

/// One JSON scalar as an element type.
trait Scalar: Sized {
    /// Parses one whole scalar token.
    fn parse(token: &str) -> Option<Self>;

    /// Parses the scalar that `rest` starts with and returns it with the bytes it took; `None` when
    /// the text there is not a valid value of this type. The default finds the token's end, then
    /// parses it; floats, the bulk of JSON tensor traffic, parse while they scan.
    fn parse_prefix(rest: &[u8]) -> Option<(Self, usize)> {
        let len = token_len(rest);
        Some((Self::parse(std::str::from_utf8(&rest[..len]).ok()?)?, len))
    }
}

/// Length of the scalar token at the start of `bytes`: up to the next separator.
#[inline]
fn token_len(bytes: &[u8]) -> usize {
    bytes.iter().position(|&b| ends_token(b)).unwrap_or(bytes.len())
}

#[inline]
fn ends_token(b: u8) -> bool {
    matches!(b, b',' | b']' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
}

/// Exact powers of ten up to 1e22, the largest that an f64 holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];

/// Appends the decimal digits at `bytes[*i..]` to `mantissa` and returns how many there were.
/// Wraps past 19 digits; the caller then discards the value.
#[inline(always)]
fn digits(bytes: &[u8], i: &mut usize, mantissa: &mut u64) -> usize {
    let start = *i;
    while let Some(&b) = bytes.get(*i) {
        let d = b.wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d));
        *i += 1;
    }
    *i - start
}

/// A plain decimal (`-0.0892`, `17`, `3.25`) at the start of `bytes`, parsed in the same pass
/// that finds its end: the form nearly all tensor data takes. When the digits, read as an integer,
/// are at most 2^53 and there are at most 22 fraction digits, both that integer and the power of
/// ten are exact f64 values, so one division gives the correctly rounded f64 (Clinger's fast
/// path). `None` for anything else (exponents, long mantissas), which the standard library's parser
/// then handles.
#[inline(always)]
fn fast_decimal_prefix(bytes: &[u8]) -> Option<(f64, usize)> {
    let negative = bytes.first() == Some(&b'-');
    let mut i = usize::from(negative);
    let mut mantissa = 0u64;
    let int_digits = digits(bytes, &mut i, &mut mantissa);
    let mut fraction_digits = 0;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        fraction_digits = digits(bytes, &mut i, &mut mantissa);
        if fraction_digits == 0 {
            return None;
        }
    }
    // JSON allows no leading zeros ("01"): such text is left to `parse`, which refuses it.
    let leading_zero = int_digits > 1 && bytes.get(usize::from(negative)) == Some(&b'0');
    let exact = int_digits > 0
        && !leading_zero
        && int_digits + fraction_digits <= 19
        && mantissa <= 1 << 53
        && fraction_digits <= 22;
    if !exact || !bytes.get(i).is_none_or(|&b| ends_token(b)) {
        return None;
    }
    let value = mantissa as f64 / POW10[fraction_digits];
    Some((if negative { -value } else { value }, i))
}

/// Whether `token` is a number in JSON's grammar (RFC 8259, 6):
/// `-? (0 | [1-9][0-9]*) (\.[0-9]+)? ([eE][+-]?[0-9]+)?`.
fn is_json_number(token: &[u8]) -> bool {
    let digits = |i: &mut usize| {
        let start = *i;
        while token.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let mut i = usize::from(token.first() == Some(&b'-'));
    let int_start = i;
    let int_digits = digits(&mut i);
    if int_digits == 0 || (int_digits > 1 && token[int_start] == b'0') {
        return false;
    }
    if token.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(token.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(token.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == token.len()
}

impl Scalar for f64 {
    fn parse(token: &str) -> Option<Self> {
        // Only JSON's number grammar: Rust's parser also takes "inf", "NaN", "+1", "01" and "1.".
        let b = token.as_bytes();
        if !is_json_number(b) {
            return None;
        }
        // A number past f64's range parses to infinity: out of range, not a value.
        let value = fast_decimal_prefix(b).filter(|&(_, len)| len == b.len()).map(|(v, _)| v);
        value.or_else(|| token.parse().ok()).filter(|v: &f64| v.is_finite())
    }

    #[inline(always)]
    fn parse_prefix(rest: &[u8]) -> Option<(Self, usize)> {
        fast_decimal_prefix(rest).or_else(|| {
            let len = token_len(rest);
            Some((Self::parse(std::str::from_utf8(&rest[..len]).ok()?)?, len))
        })
    }
}

impl Scalar for f32 {
    fn parse(token: &str) -> Option<Self> {
        // Through f64, as serde_json and NumPy's float32(float(text)) do.
        // A finite f64 beyond f32's range (1e39) rounds to infinity: refused, not served as inf.
        <f64 as Scalar>::parse(token).map(|v| v as f32).filter(|v| v.is_finite())
    }

    #[inline(always)]
    fn parse_prefix(rest: &[u8]) -> Option<(Self, usize)> {
        <f64 as Scalar>::parse_prefix(rest).map(|(v, len)| (v as f32, len)).filter(|(v, _)| v.is_finite())
    }
}

macro_rules! int_scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            fn parse(token: &str) -> Option<Self> {
                // JSON's grammar first (Rust's parser takes "+1" and "01"); then `parse` refuses
                // fractions, exponents and values out of the type's range.
                if is_json_number(token.as_bytes()) { token.parse().ok() } else { None }
            }
        }
    )*};
}
int_scalar!(u8, u16, u32, u64, i8, i16, i32, i64);

impl Scalar for bool {
    fn parse(token: &str) -> Option<Self> {
        match token {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }
}

impl Scalar for f16 {
    fn parse(token: &str) -> Option<Self> {
        // 70000 is past FP16's largest value (65504) and would round to infinity.
        <f32 as Scalar>::parse(token).map(f16::from_f32).filter(|v| v.is_finite())
    }

    fn parse_prefix(rest: &[u8]) -> Option<(Self, usize)> {
        <f32 as Scalar>::parse_prefix(rest).map(|(v, len)| (f16::from_f32(v), len)).filter(|(v, _)| v.is_finite())
    }
}

/// A BYTES element: a JSON string, its UTF-8 bytes kept as they are.
impl Scalar for Vec<u8> {
    fn parse(token: &str) -> Option<Self> {
        Self::parse_prefix(token.as_bytes()).filter(|&(_, len)| len == token.len()).map(|(v, _)| v)
    }

    fn parse_prefix(rest: &[u8]) -> Option<(Self, usize)> {
        if rest.first() != Some(&b'"') {
            return None;
        }
        // The closing quote: the first one not escaped by a backslash.
        let mut i = 1;
        let mut escaped = false;
        loop {
            match *rest.get(i)? {
                b'\\' => {
                    escaped = true;
                    i += 2;
                }
                b'"' => break,
                // JSON strings hold no raw control characters; they must be escaped.
                0..0x20 => return None,
                _ => i += 1,
            }
        }
        let literal = &rest[..=i];
        if !escaped {
            return Some((literal[1..i].to_vec(), i + 1));
        }
        let text: String = serde_json::from_slice(literal).ok()?;
        Some((text.into_bytes(), i + 1))
    }
}

/// A recursive-descent reader over the bytes of one JSON value holding numbers or booleans,
/// nested to any rectangular depth. It parses each scalar straight from its text into the
/// element type, so nothing is allocated per element and nothing is parsed twice.
struct Scanner<'a, 's, T> {
    src: &'a str,
    pos: usize,
    out: Vec<T>,
    shape: Option<&'s mut ShapeTracker>,
    dtype: DataType,
}

impl<T: Scalar> Scanner<'_, '_, T> {
    fn fail<R>(&self, what: impl fmt::Display) -> Result<R, DataError> {
        Err(DataError(format!("{what} at byte {}", self.pos)))
    }

    fn skip_ws(&mut self) {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() && matches!(bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.as_bytes().get(self.pos).copied()
    }

    fn value(&mut self, depth: usize) -> Result<(), DataError> {
        self.skip_ws();
        match self.peek() {
            None => self.fail("unexpected end of data"),
            Some(b'[') => self.array(depth),
            Some(_) => self.scalar(depth),
        }
    }

    fn array(&mut self, depth: usize) -> Result<(), DataError> {
        if depth >= MAX_DEPTH {
            return self.fail(format!("arrays nested deeper than {MAX_DEPTH}"));
        }
        self.pos += 1;
        self.skip_ws();
        let mut len = 0i64;
        if self.peek() == Some(b']') {
            self.pos += 1;
        } else {
            loop {
                // Scalars are read here rather than through `value`: they are nearly every
                // element of a tensor, and this loop is the decoder's hot path.
                match self.peek() {
                    Some(b'[') => self.array(depth + 1)?,
                    Some(b' ' | b'\t' | b'\n' | b'\r') => self.value(depth + 1)?,
                    _ => self.scalar(depth + 1)?,
                }
                len += 1;
                match self.peek() {
                    Some(b',') => self.pos += 1,
                    Some(b']') => {
                        self.pos += 1;
                        break;
                    }
                    Some(b' ' | b'\t' | b'\n' | b'\r') => {
                        self.skip_ws();
                        match self.peek() {
                            Some(b',') => self.pos += 1,
                            Some(b']') => {
                                self.pos += 1;
                                break;
                            }
                            _ => return self.fail("expected ',' or ']'"),
                        }
                    }
                    _ => return self.fail("expected ',' or ']'"),
                }
            }
        }
        match self.shape.as_deref_mut().map(|s| s.enter(depth, len)) {
            Some(Err(e)) => self.fail(e),
            _ => Ok(()),
        }
    }

    #[inline(always)]
    fn scalar(&mut self, depth: usize) -> Result<(), DataError> {
        let rest = &self.src.as_bytes()[self.pos..];
        let Some((v, len)) = T::parse_prefix(rest) else {
            let token = String::from_utf8_lossy(&rest[..token_len(rest)]);
            return self.fail(format!("{token} is not a valid {} value (or is out of its range)", self.dtype));
        };
        self.pos += len;
        self.out.push(v);
        match self.shape.as_deref_mut().map(|s| s.leaf(depth)) {
            Some(Err(e)) => self.fail(e),
            _ => Ok(()),
        }
    }
}

/// Reads the value at `src[start..]` and returns it with the offset just past it.
fn scan<T: Scalar>(
    src: &str,
    start: usize,
    dtype: DataType,
    shape: Option<&mut ShapeTracker>,
    elements_hint: Option<usize>,
) -> Result<(Vec<T>, usize), DataError> {
    // Each element takes at least two bytes of text ("1,"), which bounds a hint taken from a
    // client's shape; without one, rows of short numbers (about 8 bytes each) are a close guess.
    let text = src.len().saturating_sub(start);
    let capacity = elements_hint.unwrap_or(text / 8).min(text / 2 + 1);
    let mut scanner = Scanner { src, pos: start, out: Vec::with_capacity(capacity), shape, dtype };
    scanner.value(0)?;
    Ok((scanner.out, scanner.pos))
}

/// Decodes a JSON value (a scalar or arbitrarily nested arrays) into a typed buffer.
pub fn decode_data(
    raw: &serde_json::value::RawValue,
    dtype: DataType,
    shape: Option<&mut ShapeTracker>,
) -> Result<TensorData, DataError> {
    let src = raw.get();
    let (data, end) = decode_at(src, 0, dtype, shape, None)?;
    let rest = &src[end..];
    if !rest.trim_start().is_empty() {
        return Err(DataError(format!("unexpected text after the data at byte {}", src.len() - rest.len())));
    }
    Ok(data)
}

/// Decodes the JSON value that starts at `src[start..]` (after optional whitespace) into a typed
/// buffer and returns it with the offset just past the value. Error offsets are offsets in `src`.
/// `elements_hint` sizes the buffer (say, from the request's shape).
pub fn decode_at(
    src: &str,
    start: usize,
    dtype: DataType,
    shape: Option<&mut ShapeTracker>,
    elements_hint: Option<usize>,
) -> Result<(TensorData, usize), DataError> {
    macro_rules! typed {
        ($variant:ident) => {{
            let (v, end) = scan(src, start, dtype, shape, elements_hint)?;
            (TensorData::$variant(v), end)
        }};
    }
    Ok(match dtype {
        DataType::Bool => typed!(Bool),
        DataType::U8 => typed!(U8),
        DataType::U16 => typed!(U16),
        DataType::U32 => typed!(U32),
        DataType::U64 => typed!(U64),
        DataType::I8 => typed!(I8),
        DataType::I16 => typed!(I16),
        DataType::I32 => typed!(I32),
        DataType::I64 => typed!(I64),
        DataType::F16 => typed!(F16),
        DataType::F32 => typed!(F32),
        DataType::F64 => typed!(F64),
        DataType::Bytes => typed!(Bytes),
    })
}

/// Applies `$body` to the typed vector of every datatype that serde can write as-is, `$f16` to FP16
/// (written as `f32` numbers, since JSON has no half floats) and `$bytes` to BYTES (written as
/// strings).
macro_rules! with_json_data {
    ($data:expr, $v:ident => $body:expr, $h:ident => $f16:expr, $b:ident => $bytes:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::U8($v) => $body,
            TensorData::U16($v) => $body,
            TensorData::U32($v) => $body,
            TensorData::U64($v) => $body,
            TensorData::I8($v) => $body,
            TensorData::I16($v) => $body,
            TensorData::I32($v) => $body,
            TensorData::I64($v) => $body,
            TensorData::F32($v) => $body,
            TensorData::F64($v) => $body,
            TensorData::F16($h) => $f16,
            TensorData::Bytes($b) => $bytes,
        }
    };
}

/// A BYTES element written as a JSON string. JSON strings hold text only: an element that is not
/// UTF-8 cannot be written without changing it, so it is an error that says how to get it whole.
struct JsonBytes<'a>(&'a [u8]);

impl Serialize for JsonBytes<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => Err(serde::ser::Error::custom(
                "a BYTES element is not UTF-8 text, which JSON cannot carry: ask for the output as binary data",
            )),
        }
    }
}

/// Serializes a buffer as a flat JSON array (FP16 as numbers).
pub struct FlatData<'a>(pub &'a TensorData);

impl Serialize for FlatData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        with_json_data!(
            self.0,
            v => s.collect_seq(v.iter()),
            h => s.collect_seq(h.iter().map(|x| x.to_f32())),
            b => s.collect_seq(b.iter().map(|x| JsonBytes(x)))
        )
    }
}

/// Serializes a buffer as nested JSON arrays following `shape` (for `/score` responses).
pub struct NestedData<'a> {
    pub data: &'a TensorData,
    pub shape: &'a [i64],
}

impl Serialize for NestedData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        with_json_data!(self.data, v => Nest { items: v, shape: self.shape }.serialize(s), h => {
            let wide: Vec<f32> = h.iter().map(|x| x.to_f32()).collect();
            Nest { items: &wide, shape: self.shape }.serialize(s)
        }, b => {
            let text: Vec<JsonBytes> = b.iter().map(|x| JsonBytes(x)).collect();
            Nest { items: &text, shape: self.shape }.serialize(s)
        })
    }
}

struct Nest<'a, T> {
    items: &'a [T],
    shape: &'a [i64],
}

impl<T: Serialize> Serialize for Nest<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.shape {
            [] => self.items.first().serialize(s),
            [_] => s.collect_seq(self.items),
            [rows, rest @ ..] => {
                let row_len = rest.iter().product::<i64>().max(0) as usize;
                let mut seq = s.serialize_seq(Some((*rows).max(0) as usize))?;
                for r in 0..(*rows).max(0) as usize {
                    let items = self.items.get(r * row_len..(r + 1) * row_len).unwrap_or(&[]);
                    seq.serialize_element(&Nest { items, shape: rest })?;
                }
                seq.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<serde_json::value::RawValue> {
        serde_json::value::RawValue::from_string(s.to_owned()).expect("valid json")
    }

    #[test]
    fn flattens_nested_and_tracks_shape() {
        let mut shape = ShapeTracker::default();
        let data = decode_data(&raw("[[1, 2.5, 3], [4, 5, 6]]"), DataType::F32, Some(&mut shape)).expect("valid");
        assert_eq!(data, TensorData::F32(vec![1.0, 2.5, 3.0, 4.0, 5.0, 6.0]));
        assert_eq!(shape.shape(), vec![2, 3]);
    }

    #[test]
    fn refuses_ragged_wrong_type_and_out_of_range() {
        let mut shape = ShapeTracker::default();
        let err = decode_data(&raw("[[1, 2], [3]]"), DataType::F32, Some(&mut shape)).expect_err("ragged");
        assert!(err.to_string().contains("ragged"), "{err}");
        let err = decode_data(&raw("[1, \"a\"]"), DataType::F32, None).expect_err("string");
        assert!(
            err.to_string().contains("\"a\" is not a valid FP32 value (or is out of its range) at byte 4"),
            "{err}"
        );
        // (Syntax errors never get here: the request is valid JSON before its data is read.)
        assert!(decode_data(&raw("[1e3]"), DataType::I64, None).is_err());
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        let err = decode_data(&raw(&deep), DataType::F32, None).expect_err("too deep");
        assert!(err.to_string().contains("nested deeper than 32"), "{err}");
        let err = decode_data(&raw("[300]"), DataType::U8, None).expect_err("range");
        assert!(err.to_string().contains("300"), "{err}");
        let err = decode_data(&raw("[1.5]"), DataType::I32, None).expect_err("float for int");
        assert!(err.to_string().contains("1.5"), "{err}");
        assert!(decode_data(&raw("[1]"), DataType::Bool, None).is_err());
        assert_eq!(decode_data(&raw(" 2.5 "), DataType::F64, None).expect("scalar"), TensorData::F64(vec![2.5]));
        assert_eq!(decode_data(&raw("[[], []]"), DataType::F32, None).expect("empty rows"), TensorData::F32(vec![]));
        assert_eq!(
            decode_data(&raw("[-0.0, 1E-3]"), DataType::F32, None).expect("ok"),
            TensorData::F32(vec![-0.0, 1e-3])
        );
    }

    #[test]
    fn fast_decimals_match_the_standard_parser() {
        let samples = [
            "0",
            "-0",
            "1",
            "17",
            "0.5",
            "-0.0892510",
            "3.25",
            "123456.789",
            "0.000000000000000000001",
            "999999999999999",
            "0.1",
            "0.2",
            "0.3",
            "2.675",
            "1.0000000000000002",
            "12345678901234567890",
            "0.45747238",
            "-1234.5678",
        ];
        for s in samples {
            let want: f64 = s.parse().expect("valid");
            let got = <f64 as Scalar>::parse(s).expect("parses");
            assert_eq!(got.to_bits(), want.to_bits(), "{s}");
            assert_eq!(<f32 as Scalar>::parse(s).expect("parses"), want as f32, "{s}");
            // The same value when the number is read in a scan, ended by a separator.
            for (text, sep) in [(s.to_owned(), ""), (format!("{s},9"), ","), (format!("{s}]"), "]")] {
                let (got, len) = <f64 as Scalar>::parse_prefix(text.as_bytes()).expect("parses");
                assert_eq!((got.to_bits(), len), (want.to_bits(), s.len()), "{s}{sep}");
            }
        }
        for bad in ["", "-", ".", "1.2.3", "1-2", "+1", "inf", "-inf", "NaN", "1,0", "-.5", "1.5x", "00.5", "1."] {
            assert!(<f64 as Scalar>::parse(bad).is_none(), "{bad}");
        }
        for bad in ["", "-", ".", "1.2.3", "1-2", "+1", "inf", "-inf", "NaN", "-.5", "1.5x", "1e"] {
            assert!(<f64 as Scalar>::parse_prefix(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn numbers_beyond_a_float_type_are_refused_not_infinite() {
        for (text, dtype) in [
            ("[1e39]", DataType::F32),
            ("[-3.5e38]", DataType::F32),
            ("[70000]", DataType::F16),
            ("[1e309]", DataType::F64),
        ] {
            let err = decode_data(&raw(text), dtype, None).expect_err(text).to_string();
            assert!(err.contains("out of its range"), "{text}: {err}");
        }
        assert_eq!(decode_data(&raw("[65504]"), DataType::F16, None).expect("largest FP16").len(), 1);
        assert_eq!(decode_data(&raw("[3.4e38]"), DataType::F32, None).expect("near the FP32 limit").len(), 1);
    }

    #[test]
    fn only_json_numbers_are_read() {
        // Found by the oip_request fuzz target: "0255" was read as 255, though JSON has no
        // leading zeros; Rust's parsers also take "1." and "1.e5".
        for dtype in [DataType::U8, DataType::I32, DataType::F16, DataType::F32, DataType::F64] {
            for bad in ["[0255]", "[-01]", "[00]", "[1.]", "[1.e5]", "[00.5]", "[+1]", "[.5]", "[1e]", "[1e+]"] {
                // Not through `raw`: serde_json's RawValue would refuse these before the decoder.
                let err = decode_at(bad, 0, dtype, None, None).expect_err(bad).to_string();
                assert!(err.contains("is not a valid"), "{bad} as {dtype}: {err}");
            }
            for good in ["[0]", "[10]", "[2,100]"] {
                assert!(decode_data(&raw(good), dtype, None).is_ok(), "{good} as {dtype}");
            }
        }
        for good in ["[0.5]", "[-0.25]", "[1e2]", "[1E+2]", "[10.0e-1]", "[100.125]"] {
            assert!(decode_data(&raw(good), DataType::F64, None).is_ok(), "{good}");
        }
        for (text, want) in [("0", true), ("-0.0e0", true), ("01", false), ("-", false), ("1.5.", false)] {
            assert_eq!(is_json_number(text.as_bytes()), want, "{text}");
        }
    }

    #[test]
    fn every_dtype_decodes() {
        assert_eq!(
            decode_data(&raw("[true,false]"), DataType::Bool, None).expect("ok"),
            TensorData::Bool(vec![true, false])
        );
        assert_eq!(decode_data(&raw("[-1,2]"), DataType::I8, None).expect("ok"), TensorData::I8(vec![-1, 2]));
        assert_eq!(
            decode_data(&raw("[0.5]"), DataType::F16, None).expect("ok"),
            TensorData::F16(vec![f16::from_f32(0.5)])
        );
        assert_eq!(
            decode_data(&raw("[18446744073709551615]"), DataType::U64, None).expect("ok"),
            TensorData::U64(vec![u64::MAX])
        );
    }

    #[test]
    fn bytes_are_json_strings() {
        let mut shape = ShapeTracker::default();
        let text = r#"[["cat", "a, \"quoted\" ]word"], ["caf\u00e9", ""]]"#;
        let data = decode_data(&raw(text), DataType::Bytes, Some(&mut shape)).expect("strings");
        let want: Vec<Vec<u8>> = vec![b"cat".to_vec(), br#"a, "quoted" ]word"#.to_vec(), "caf\u{e9}".into(), vec![]];
        assert_eq!(data, TensorData::Bytes(want));
        assert_eq!(shape.shape(), vec![2, 2]);
        let json = serde_json::to_string(&NestedData { data: &data, shape: &[2, 2] }).expect("serializes");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&json).expect("json"),
            serde_json::from_str::<serde_json::Value>(text).expect("json")
        );
        let err = decode_data(&raw("[\"a\", 1]"), DataType::Bytes, None).expect_err("a number");
        assert!(err.to_string().contains("1 is not a valid BYTES value"), "{err}");
        assert!(decode_at("[\"open]", 0, DataType::Bytes, None, None).is_err());
        // Found by the oip_request fuzz target: a raw control character is not JSON.
        assert!(decode_at("[\"tab\there\"]", 0, DataType::Bytes, None, None).is_err());
        assert!(decode_at("[\"tab\\there\"]", 0, DataType::Bytes, None, None).is_ok());
        let binary = TensorData::Bytes(vec![vec![0xff, 0xfe]]);
        let err = serde_json::to_string(&FlatData(&binary)).expect_err("not UTF-8");
        assert!(err.to_string().contains("binary data"), "{err}");
    }

    #[test]
    fn nests_output_by_shape() {
        let data = TensorData::I32(vec![1, 2, 3, 4, 5, 6]);
        let json = serde_json::to_string(&NestedData { data: &data, shape: &[2, 3] }).expect("serializes");
        assert_eq!(json, "[[1,2,3],[4,5,6]]");
        let flat = serde_json::to_string(&FlatData(&data)).expect("serializes");
        assert_eq!(flat, "[1,2,3,4,5,6]");
    }
}
