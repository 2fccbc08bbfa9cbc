//! The JSON part of a v2 infer request, read in one pass.
//!
//! Reading it with serde would capture each input's `data` as raw text first (a full scan of what
//! is nearly the whole body) and then scan it again to decode the numbers; for a 784-float request
//! that first pass was about 40% of the JSON time. This reader walks the request object itself and
//! decodes `data` in place with the typed scanner ([`crate::json`]) once the input's datatype is
//! known. A `data` that comes before its `datatype` (serializers that sort keys do that) is
//! skipped, and decoded once the input's object closes.
//!
//! Unknown fields are skipped, as serde would; duplicate and missing fields are refused by name.
//! Syntax errors give the byte offset.

use std::borrow::Cow;
use std::fmt;

use sluice_core::{DataType, TensorData};

use crate::json::decode_at;

/// One input as the request gives it.
#[derive(Debug)]
pub struct WireInput {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: DataType,
    pub binary_data_size: Option<u64>,
    /// Decoded JSON `data`; `None` when the input has none (its data is then binary).
    pub data: Option<TensorData>,
}

/// A requested output: its name and its own `binary_data` choice.
#[derive(Debug)]
pub struct WireOutput {
    pub name: String,
    pub binary_data: Option<bool>,
}

#[derive(Debug)]
pub struct WireRequest<'a> {
    pub id: Option<Cow<'a, str>>,
    pub binary_data_output: Option<bool>,
    pub inputs: Vec<WireInput>,
    pub outputs: Option<Vec<WireOutput>>,
}

/// Why a request could not be read. The message is complete: it says whether the JSON is
/// malformed or which input is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError(pub String);

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Deepest nesting skipped in unknown fields; keeps a hostile `[[[[...` from exhausting the stack.
const MAX_DEPTH: usize = 128;

/// Reads the JSON part of an infer request.
pub fn read_request(json: &[u8]) -> Result<WireRequest<'_>, RequestError> {
    let src = std::str::from_utf8(json)
        .map_err(|e| RequestError(format!("malformed request JSON: invalid UTF-8 at byte {}", e.valid_up_to())))?;
    let mut r = Reader { src, pos: 0 };
    let request = r.request().map_err(|e| match e {
        Fault::Syntax(what, at) => RequestError(format!("malformed request JSON: {what} at byte {at}")),
        Fault::Request(message) => RequestError(message),
    })?;
    r.ws();
    if r.pos != src.len() {
        return Err(RequestError(format!("malformed request JSON: trailing characters at byte {}", r.pos)));
    }
    Ok(request)
}

enum Fault {
    /// The text is not the JSON expected here: what was expected and the byte offset.
    Syntax(String, usize),
    /// Well-formed JSON that is not a valid request.
    Request(String),
}

type Read<T> = Result<T, Fault>;

/// Where an input's data is while its object is being read.
enum Data {
    Absent,
    Decoded(TensorData),
    /// Came before the datatype: the value's byte range, decoded once the object closes.
    Deferred(usize, usize),
    /// The scanner refused it: the message, kept until the input's name is known.
    Invalid(String),
}

struct Reader<'a> {
    src: &'a str,
    pos: usize,
}

impl<'a> Reader<'a> {
    fn syntax<T>(&self, what: impl Into<String>) -> Read<T> {
        Err(Fault::Syntax(what.into(), self.pos))
    }

    fn ws(&mut self) {
        let bytes = self.src.as_bytes();
        while self.pos < bytes.len() && matches!(bytes[self.pos], b' ' | b'\t' | b'\n' | b'\r') {
            self.pos += 1;
        }
    }

    /// The next byte after whitespace, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.ws();
        self.src.as_bytes().get(self.pos).copied()
    }

    fn expect(&mut self, byte: u8) -> Read<()> {
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            self.syntax(format!("expected '{}'", byte as char))
        }
    }

    /// Consumes `word` (`null`, `true`, `false`) if it is next.
    fn literal(&mut self, word: &str) -> bool {
        let found = self.peek().is_some() && self.src[self.pos..].starts_with(word);
        if found {
            self.pos += word.len();
        }
        found
    }

    /// `{ "key": value, ... }`, calling `field` with each key; `field` must read the value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, Cow<'a, str>) -> Read<()>) -> Read<()> {
        self.expect(b'{')?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            if self.peek() != Some(b'"') {
                return self.syntax("expected a field name");
            }
            let key = self.string()?;
            self.expect(b':')?;
            field(self, key)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.syntax("expected ',' or '}'"),
            }
        }
    }

    /// `[ value, ... ]`, calling `element` to read each value.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Read<()>) -> Read<()> {
        self.expect(b'[')?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return self.syntax("expected ',' or ']'"),
            }
        }
    }

    /// A string, borrowed from the request unless it has escapes.
    fn string(&mut self) -> Read<Cow<'a, str>> {
        if self.peek() != Some(b'"') {
            return self.syntax("expected a string");
        }
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut i = start + 1;
        let mut plain = true;
        loop {
            match bytes.get(i) {
                None => {
                    self.pos = start;
                    return self.syntax("unterminated string");
                }
                Some(b'"') => break,
                Some(b'\\') => {
                    plain = false;
                    i += 2;
                }
                Some(&b) => {
                    plain &= b >= 0x20;
                    i += 1;
                }
            }
        }
        self.pos = i + 1;
        if plain {
            return Ok(Cow::Borrowed(&self.src[start + 1..i]));
        }
        // Escapes and control characters are rare in requests: serde_json applies JSON's rules.
        serde_json::from_str::<String>(&self.src[start..self.pos]).map(Cow::Owned).or_else(|e| {
            self.pos = start;
            self.syntax(format!("invalid string ({e})"))
        })
    }

    /// The text of a JSON number, checked against JSON's grammar.
    fn number_text(&mut self) -> Read<&'a str> {
        self.ws();
        let bytes = self.src.as_bytes();
        let start = self.pos;
        let mut i = start;
        let digits = |i: &mut usize| {
            let from = *i;
            while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
                *i += 1;
            }
            *i > from
        };
        if bytes.get(i) == Some(&b'-') {
            i += 1;
        }
        // JSON allows no leading zeros ("01").
        let leading_zero = bytes.get(i) == Some(&b'0') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
        let mut ok = digits(&mut i) && !leading_zero;
        if ok && bytes.get(i) == Some(&b'.') {
            i += 1;
            ok = digits(&mut i);
        }
        if ok && matches!(bytes.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(bytes.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            ok = digits(&mut i);
        }
        if !ok {
            return self.syntax("expected a number");
        }
        self.pos = i;
        Ok(&self.src[start..i])
    }

    fn integer<T: std::str::FromStr>(&mut self, field: &str) -> Read<T> {
        let start = self.pos;
        let text = self.number_text()?;
        text.parse().or_else(|_| {
            self.pos = start;
            self.syntax(format!("`{field}` must be a non-fractional number in range, got {text}"))
        })
    }

    fn boolean(&mut self, field: &str) -> Read<bool> {
        if self.literal("true") {
            Ok(true)
        } else if self.literal("false") {
            Ok(false)
        } else {
            self.syntax(format!("`{field}` must be true or false"))
        }
    }

    /// `null`, or what `read` reads.
    fn nullable<T>(&mut self, read: impl FnOnce(&mut Self) -> Read<T>) -> Read<Option<T>> {
        if self.literal("null") { Ok(None) } else { read(self).map(Some) }
    }

    /// Any JSON value, checked and skipped.
    fn skip(&mut self, depth: usize) -> Read<()> {
        if depth > MAX_DEPTH {
            return self.syntax(format!("values nested deeper than {MAX_DEPTH}"));
        }
        match self.peek() {
            Some(b'{') => self.object(|r, _| r.skip(depth + 1)),
            Some(b'[') => self.array(|r| r.skip(depth + 1)),
            Some(b'"') => self.string().map(drop),
            Some(b't' | b'f' | b'n') if self.literal("true") || self.literal("false") || self.literal("null") => Ok(()),
            Some(_) => self.number_text().map(drop),
            None => self.syntax("unexpected end of input"),
        }
    }

    fn request(&mut self) -> Read<WireRequest<'a>> {
        let mut id = None;
        let mut binary_data_output = None;
        let mut inputs = None;
        let mut outputs = None;
        let mut seen = Seen::default();
        self.object(|r, key| {
            match &*key {
                "id" => {
                    seen.once("id")?;
                    id = r.nullable(|r| r.string())?;
                }
                "parameters" => {
                    seen.once("parameters")?;
                    r.nullable(|r| {
                        r.object(|r, key| match &*key {
                            "binary_data_output" => {
                                binary_data_output = r.nullable(|r| r.boolean("binary_data_output"))?;
                                Ok(())
                            }
                            _ => r.skip(1),
                        })
                    })?;
                }
                "inputs" => {
                    seen.once("inputs")?;
                    let mut list = Vec::new();
                    r.array(|r| {
                        list.push(r.input(list.len())?);
                        Ok(())
                    })?;
                    inputs = Some(list);
                }
                "outputs" => {
                    seen.once("outputs")?;
                    outputs = r.nullable(|r| {
                        let mut list = Vec::new();
                        r.array(|r| {
                            list.push(r.output()?);
                            Ok(())
                        })?;
                        Ok(list)
                    })?;
                }
                _ => r.skip(0)?,
            }
            Ok(())
        })?;
        let inputs = inputs.ok_or_else(|| Fault::Request("missing field `inputs`".into()))?;
        Ok(WireRequest { id, binary_data_output, inputs, outputs })
    }

    fn input(&mut self, index: usize) -> Read<WireInput> {
        let mut name: Option<String> = None;
        let mut shape = None;
        let mut datatype: Option<DataType> = None;
        let mut binary_data_size = None;
        let mut data = Data::Absent;
        let mut seen = Seen::default();
        let which =
            |name: &Option<String>| name.as_ref().map_or_else(|| format!("input {index}"), |n| format!("input '{n}'"));
        self.object(|r, key| {
            match &*key {
                "name" => {
                    seen.once("name")?;
                    name = Some(r.string()?.into_owned());
                }
                "shape" => {
                    seen.once("shape")?;
                    let mut dims = Vec::new();
                    r.array(|r| {
                        dims.push(r.integer::<i64>("shape")?);
                        Ok(())
                    })?;
                    shape = Some(dims);
                }
                "datatype" => {
                    seen.once("datatype")?;
                    let text = r.string()?;
                    let dtype =
                        text.parse::<DataType>().map_err(|e| Fault::Request(format!("{}: {e}", which(&name))))?;
                    datatype = Some(dtype);
                }
                "parameters" => {
                    seen.once("parameters")?;
                    r.nullable(|r| {
                        r.object(|r, key| match &*key {
                            "binary_data_size" => {
                                binary_data_size = r.nullable(|r| r.integer::<u64>("binary_data_size"))?;
                                Ok(())
                            }
                            _ => r.skip(1),
                        })
                    })?;
                }
                "data" => {
                    seen.once("data")?;
                    let elements = shape.as_ref().and_then(|dims: &Vec<i64>| {
                        dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
                    });
                    data = r.data(datatype, elements)?;
                }
                _ => r.skip(0)?,
            }
            Ok(())
        })?;
        let missing = |field: &str| Fault::Request(format!("{}: missing field `{field}`", which(&name)));
        let (Some(datatype), Some(shape)) = (datatype, shape) else {
            return Err(missing(if datatype.is_none() { "datatype" } else { "shape" }));
        };
        let Some(name) = name else { return Err(missing("name")) };
        let invalid = |e: String| Fault::Request(format!("input '{name}': invalid data: {e}"));
        let data = match data {
            Data::Absent => None,
            Data::Decoded(d) => Some(d),
            Data::Deferred(start, end) => Some(
                decode_at(&self.src[..end], start, datatype, None, None)
                    .map(|(d, _)| d)
                    .map_err(|e| invalid(e.to_string()))?,
            ),
            Data::Invalid(e) => return Err(invalid(e)),
        };
        Ok(WireInput { name, shape, datatype, binary_data_size, data })
    }

    /// An input's `data`, decoded in place when its datatype is already known.
    fn data(&mut self, datatype: Option<DataType>, elements: Option<usize>) -> Read<Data> {
        if self.literal("null") {
            return Ok(Data::Absent);
        }
        self.ws();
        let start = self.pos;
        let Some(dtype) = datatype else {
            self.skip(0)?;
            return Ok(Data::Deferred(start, self.pos));
        };
        match decode_at(self.src, start, dtype, None, elements) {
            Ok((decoded, end)) => {
                self.pos = end;
                Ok(Data::Decoded(decoded))
            }
            Err(e) => {
                // Past the bad value, so the input's name can still be read for the message.
                self.skip(0)?;
                Ok(Data::Invalid(e.to_string()))
            }
        }
    }

    fn output(&mut self) -> Read<WireOutput> {
        let mut name = None;
        let mut binary_data = None;
        self.object(|r, key| {
            match &*key {
                "name" => name = Some(r.string()?.into_owned()),
                "parameters" => r
                    .nullable(|r| {
                        r.object(|r, key| match &*key {
                            "binary_data" => {
                                binary_data = r.nullable(|r| r.boolean("binary_data"))?;
                                Ok(())
                            }
                            _ => r.skip(1),
                        })
                    })
                    .map(drop)?,
                _ => r.skip(0)?,
            }
            Ok(())
        })?;
        let name = name.ok_or_else(|| Fault::Request("requested output: missing field `name`".into()))?;
        Ok(WireOutput { name, binary_data })
    }
}

/// Fields already read in one object, so a repeated one is refused rather than silently replaced.
/// A bit per field name in [`FIELDS`]: no allocation per object.
#[derive(Default)]
struct Seen(u16);

/// Every field that [`Seen`] tracks, across the request and input objects.
const FIELDS: [&str; 8] = ["id", "parameters", "inputs", "outputs", "name", "shape", "datatype", "data"];

impl Seen {
    fn once(&mut self, field: &'static str) -> Read<()> {
        let bit = 1 << FIELDS.iter().position(|&f| f == field).expect("a tracked field; this is a bug");
        if self.0 & bit != 0 {
            return Err(Fault::Request(format!("duplicate field `{field}`")));
        }
        self.0 |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<WireRequest<'_>, String> {
        read_request(text.as_bytes()).map_err(|e| e.0)
    }

    #[test]
    fn reads_every_field_in_any_order() {
        let text = r#" { "id" : "r\u00e9q-1", "parameters": {"binary_data_output": true, "other": [1, {"x": null}]},
            "inputs": [
              {"name": "a", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2.5], [-3e2, 4]]},
              {"data": [7, 8], "shape": [2], "datatype": "INT64", "name": "b", "extra": "ignored"},
              {"name": "c", "shape": [3], "datatype": "UINT8", "parameters": {"binary_data_size": 3}}
            ],
            "outputs": [{"name": "y", "parameters": {"binary_data": false}}, {"name": "z"}] } "#;
        let r = read(text).expect("valid");
        assert_eq!(r.id.as_deref(), Some("réq-1"));
        assert_eq!(r.binary_data_output, Some(true));
        assert_eq!(r.inputs.len(), 3);
        assert_eq!(r.inputs[0].data, Some(TensorData::F32(vec![1.0, 2.5, -300.0, 4.0])));
        assert_eq!(r.inputs[0].shape, vec![2, 2]);
        // `data` before `datatype`: decoded once the object closes.
        assert_eq!((r.inputs[1].name.as_str(), &r.inputs[1].data), ("b", &Some(TensorData::I64(vec![7, 8]))));
        assert_eq!((r.inputs[2].binary_data_size, &r.inputs[2].data), (Some(3), &None));
        let outputs = r.outputs.expect("outputs");
        assert_eq!((outputs[0].name.as_str(), outputs[0].binary_data), ("y", Some(false)));
        assert_eq!((outputs[1].name.as_str(), outputs[1].binary_data), ("z", None));
    }

    #[test]
    fn agrees_with_serde_json_on_what_is_json() {
        // The reader must accept exactly JSON: check its verdict on requests broken in every spot.
        let good =
            r#"{"id":"x","inputs":[{"name":"a","shape":[1,2],"datatype":"FP32","data":[0.5,-1]}],"outputs":null}"#;
        assert!(read(good).is_ok());
        for cut in 0..good.len() {
            let broken = &good[..cut];
            assert!(serde_json::from_str::<serde_json::Value>(broken).is_err());
            let err = read(broken).expect_err(broken);
            assert!(err.starts_with("malformed request JSON") || err.contains("missing field"), "{broken}: {err}");
        }
        for bad in [
            r#"{"inputs":[],}"#,
            r#"{"inputs":[] "id":"x"}"#,
            r#"{"inputs":[],"p":01x}"#,
            r#"{"inputs":[],"p":[1,]}"#,
            r#"{"inputs":[],"p":tru}"#,
            r#"{"inputs":[],"p":"a\qb"}"#,
            r#"{"inputs":[]} x"#,
            r#"{inputs:[]}"#,
        ] {
            assert!(serde_json::from_str::<serde_json::Value>(bad).is_err(), "{bad}");
            assert!(read(bad).expect_err(bad).starts_with("malformed request JSON"), "{bad}");
        }
    }

    #[test]
    fn refuses_bad_requests_by_name() {
        let cases = [
            (r#"{}"#, "missing field `inputs`"),
            (r#"{"inputs":[{"name":"a","shape":[1]}]}"#, "input 'a': missing field `datatype`"),
            (r#"{"inputs":[{"shape":[1],"datatype":"FP32"}]}"#, "input 0: missing field `name`"),
            (r#"{"inputs":[{"name":"a","name":"b"}]}"#, "duplicate field `name`"),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FLOAT","data":[1]}]}"#,
                "input 'a': unknown datatype 'FLOAT'",
            ),
            (r#"{"inputs":[{"name":"a","shape":[1.5],"datatype":"FP32"}]}"#, "`shape` must be a non-fractional number"),
            (r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1,"two"]}]}"#, "input 'a': invalid data"),
            (r#"{"inputs":[{"data":[1,"two"],"name":"a","shape":[1],"datatype":"FP32"}]}"#, "input 'a': invalid data"),
            (
                r#"{"inputs":[{"data":[1,"two"],"shape":[1],"datatype":"FP32","name":"late"}]}"#,
                "input 'late': invalid data",
            ),
            (
                r#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-1}}]}"#,
                "binary_data_size",
            ),
        ];
        for (text, want) in cases {
            let err = read(text).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
        let deep = format!(r#"{{"inputs":[],"x":{}1{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(read(&deep).expect_err("deep").contains("nested deeper"));
    }
}
