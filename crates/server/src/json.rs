//! JSON tensor data straight into typed buffers and back.
//!
//! Request data (`[[1, 2], [3, 4]]` or `[1, 2, 3, 4]`) is decoded element by element into the
//! typed vector for the input's datatype, with no intermediate `serde_json::Value` tree; nesting is
//! flattened row-major and, when asked, its shape is recorded (for `/score`, whose requests carry
//! no shape). Range and type errors come from serde and name the offending value.

use std::fmt;
use std::marker::PhantomData;

use half::f16;
use serde::de::{self, DeserializeSeed, IntoDeserializer, SeqAccess, Visitor};
use serde::ser::{SerializeSeq, Serializer};
use serde::{Deserialize, Serialize};
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

/// Decodes a JSON value (a scalar or arbitrarily nested arrays) into a typed buffer.
pub fn decode_data(
    raw: &serde_json::value::RawValue,
    dtype: DataType,
    shape: Option<&mut ShapeTracker>,
) -> Result<TensorData, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_str(raw.get());
    macro_rules! read {
        ($variant:ident, $t:ty) => {{
            let mut out: Vec<$t> = Vec::new();
            Element { out: &mut out, depth: 0, shape, _t: PhantomData::<$t> }.deserialize(&mut de)?;
            TensorData::$variant(out)
        }};
    }
    let data = match dtype {
        DataType::Bool => read!(Bool, bool),
        DataType::U8 => read!(U8, u8),
        DataType::U16 => read!(U16, u16),
        DataType::U32 => read!(U32, u32),
        DataType::U64 => read!(U64, u64),
        DataType::I8 => read!(I8, i8),
        DataType::I16 => read!(I16, i16),
        DataType::I32 => read!(I32, i32),
        DataType::I64 => read!(I64, i64),
        DataType::F32 => read!(F32, f32),
        DataType::F64 => read!(F64, f64),
        DataType::F16 => {
            let mut wide: Vec<f32> = Vec::new();
            Element { out: &mut wide, depth: 0, shape, _t: PhantomData::<f32> }.deserialize(&mut de)?;
            TensorData::F16(wide.into_iter().map(f16::from_f32).collect())
        }
    };
    de.end()?;
    Ok(data)
}

/// One JSON value at `depth`: an array (recursed into) or a scalar (converted to `T`).
struct Element<'a, 's, T> {
    out: &'a mut Vec<T>,
    depth: usize,
    shape: Option<&'s mut ShapeTracker>,
    _t: PhantomData<T>,
}

impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Element<'_, '_, T> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: Deserialize<'de>> Element<'_, '_, T> {
    fn scalar<E: de::Error>(self, d: impl de::Deserializer<'de, Error = E>) -> Result<(), E> {
        if let Some(s) = self.shape {
            s.leaf(self.depth).map_err(E::custom)?;
        }
        self.out.push(T::deserialize(d)?);
        Ok(())
    }
}

impl<'de, T: Deserialize<'de>> Visitor<'de> for Element<'_, '_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a number, a boolean or an array of them")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.scalar(v.into_deserializer())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.scalar(v.into_deserializer())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.scalar(v.into_deserializer())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.scalar(v.into_deserializer())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Element { out, depth, mut shape, .. } = self;
        let mut len = 0i64;
        while seq
            .next_element_seed(Element {
                out: &mut *out,
                depth: depth + 1,
                shape: shape.as_deref_mut(),
                _t: PhantomData,
            })?
            .is_some()
        {
            len += 1;
        }
        if let Some(s) = shape {
            s.enter(depth, len).map_err(de::Error::custom)?;
        }
        Ok(())
    }
}

/// Applies `$body` to the typed vector of every datatype that serde can write as-is, and
/// `$f16` to FP16 (written as `f32` numbers, since JSON has no half floats).
macro_rules! with_json_data {
    ($data:expr, $v:ident => $body:expr, $h:ident => $f16:expr) => {
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
        }
    };
}

/// Serializes a buffer as a flat JSON array (FP16 as numbers).
pub struct FlatData<'a>(pub &'a TensorData);

impl Serialize for FlatData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        with_json_data!(self.0, v => s.collect_seq(v.iter()), h => s.collect_seq(h.iter().map(|x| x.to_f32())))
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
        assert!(err.to_string().contains("string"), "{err}");
        let err = decode_data(&raw("[300]"), DataType::U8, None).expect_err("range");
        assert!(err.to_string().contains("300"), "{err}");
        let err = decode_data(&raw("[1.5]"), DataType::I32, None).expect_err("float for int");
        assert!(err.to_string().contains("1.5"), "{err}");
        assert!(decode_data(&raw("[1]"), DataType::Bool, None).is_err());
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
    fn nests_output_by_shape() {
        let data = TensorData::I32(vec![1, 2, 3, 4, 5, 6]);
        let json = serde_json::to_string(&NestedData { data: &data, shape: &[2, 3] }).expect("serializes");
        assert_eq!(json, "[[1,2,3],[4,5,6]]");
        let flat = serde_json::to_string(&FlatData(&data)).expect("serializes");
        assert_eq!(flat, "[1,2,3,4,5,6]");
    }
}
