use half::f16;

use crate::DataType;

/// A tensor's elements in one typed, contiguous, row-major buffer.
///
/// Typed vectors (rather than raw bytes) keep every buffer correctly aligned for the engine, so a
/// backend can hand the slice to ONNX Runtime or libtorch without copying it again.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F16(Vec<f16>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// BYTES: one byte string per element.
    Bytes(Vec<Vec<u8>>),
}

/// Applies `$body` to the typed vector inside a [`TensorData`], whatever its datatype.
#[macro_export]
macro_rules! with_tensor_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            $crate::TensorData::Bool($v) => $body,
            $crate::TensorData::U8($v) => $body,
            $crate::TensorData::U16($v) => $body,
            $crate::TensorData::U32($v) => $body,
            $crate::TensorData::U64($v) => $body,
            $crate::TensorData::I8($v) => $body,
            $crate::TensorData::I16($v) => $body,
            $crate::TensorData::I32($v) => $body,
            $crate::TensorData::I64($v) => $body,
            $crate::TensorData::F16($v) => $body,
            $crate::TensorData::F32($v) => $body,
            $crate::TensorData::F64($v) => $body,
            $crate::TensorData::Bytes($v) => $body,
        }
    };
}

/// Errors building a tensor from wire data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("{got} bytes of binary data is not a whole number of {dtype} elements ({size} bytes each)")]
    RaggedBytes { dtype: DataType, size: usize, got: usize },
    #[error("BOOL binary data must be 0 or 1 per byte, found {0}")]
    BadBool(u8),
    #[error("BYTES element {index} claims {claimed} bytes but only {remaining} bytes of its data remain")]
    BytesOverrun { index: usize, claimed: u64, remaining: usize },
    #[error(
        "BYTES data ends with {0} bytes, too few for an element's 4-byte length (each element is a 4-byte little-endian length, then that many bytes)"
    )]
    BytesTruncated(usize),
    #[error("shape {shape:?} has a negative dimension")]
    NegativeDim { shape: Vec<i64> },
    #[error("shape {shape:?} holds {expected} elements but {got} were given")]
    LengthMismatch { shape: Vec<i64>, expected: u64, got: usize },
}

impl TensorData {
    /// An empty buffer of the given datatype with room for `capacity` elements.
    pub fn with_capacity(dtype: DataType, capacity: usize) -> Self {
        match dtype {
            DataType::Bool => TensorData::Bool(Vec::with_capacity(capacity)),
            DataType::U8 => TensorData::U8(Vec::with_capacity(capacity)),
            DataType::U16 => TensorData::U16(Vec::with_capacity(capacity)),
            DataType::U32 => TensorData::U32(Vec::with_capacity(capacity)),
            DataType::U64 => TensorData::U64(Vec::with_capacity(capacity)),
            DataType::I8 => TensorData::I8(Vec::with_capacity(capacity)),
            DataType::I16 => TensorData::I16(Vec::with_capacity(capacity)),
            DataType::I32 => TensorData::I32(Vec::with_capacity(capacity)),
            DataType::I64 => TensorData::I64(Vec::with_capacity(capacity)),
            DataType::F16 => TensorData::F16(Vec::with_capacity(capacity)),
            DataType::F32 => TensorData::F32(Vec::with_capacity(capacity)),
            DataType::F64 => TensorData::F64(Vec::with_capacity(capacity)),
            DataType::Bytes => TensorData::Bytes(Vec::with_capacity(capacity)),
        }
    }

    /// Joins buffers of one datatype end to end (row-major concatenation along the first
    /// dimension). `None` when the parts do not all have the datatype of the first.
    pub fn concat<'a>(parts: impl IntoIterator<Item = &'a TensorData> + Clone) -> Option<TensorData> {
        let first = parts.clone().into_iter().next()?;
        let total = parts.clone().into_iter().map(TensorData::len).sum();
        let mut out = TensorData::with_capacity(first.dtype(), total);
        for part in parts {
            out.extend_from(part)?;
        }
        Some(out)
    }

    /// Appends `other`'s elements; `None` (and nothing appended) when the datatypes differ.
    pub fn extend_from(&mut self, other: &TensorData) -> Option<()> {
        macro_rules! ext {
            ($($v:ident),*) => {
                match (self, other) {
                    $((TensorData::$v(a), TensorData::$v(b)) => a.extend_from_slice(b),)*
                    _ => return None,
                }
            };
        }
        ext!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, F32, F64, Bytes);
        Some(())
    }

    /// A copy of elements `range` (clamped to the buffer).
    pub fn slice(&self, range: std::ops::Range<usize>) -> TensorData {
        let end = range.end.min(self.len());
        let start = range.start.min(end);
        macro_rules! cut {
            ($($v:ident),*) => {
                match self {
                    $(TensorData::$v(a) => TensorData::$v(a[start..end].to_vec()),)*
                }
            };
        }
        cut!(Bool, U8, U16, U32, U64, I8, I16, I32, I64, F16, F32, F64, Bytes)
    }

    /// Grows or shrinks the buffer to `len` elements, filling new ones with zero (false, or an
    /// empty string).
    pub fn resize_zeroed(&mut self, len: usize) {
        with_tensor_data!(self, v => v.resize(len, Default::default()))
    }

    /// The datatype of the elements.
    pub fn dtype(&self) -> DataType {
        match self {
            TensorData::Bool(_) => DataType::Bool,
            TensorData::U8(_) => DataType::U8,
            TensorData::U16(_) => DataType::U16,
            TensorData::U32(_) => DataType::U32,
            TensorData::U64(_) => DataType::U64,
            TensorData::I8(_) => DataType::I8,
            TensorData::I16(_) => DataType::I16,
            TensorData::I32(_) => DataType::I32,
            TensorData::I64(_) => DataType::I64,
            TensorData::F16(_) => DataType::F16,
            TensorData::F32(_) => DataType::F32,
            TensorData::F64(_) => DataType::F64,
            TensorData::Bytes(_) => DataType::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_tensor_data!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Decodes the little-endian binary tensor encoding of the Open Inference Protocol. BYTES
    /// elements are each a 4-byte little-endian length and that many bytes.
    pub fn from_le_bytes(dtype: DataType, bytes: &[u8]) -> Result<Self, TensorError> {
        let Some(size) = dtype.size_in_bytes() else { return Self::from_length_prefixed(bytes) };
        if !bytes.len().is_multiple_of(size) {
            return Err(TensorError::RaggedBytes { dtype, size, got: bytes.len() });
        }
        // One bulk copy into a typed (so aligned) buffer: on little-endian hosts the wire layout
        // is the memory layout, so no per-element work is needed.
        fn copy<T: bytemuck::Pod + Default + Clone>(bytes: &[u8]) -> Vec<T> {
            let mut out = vec![T::default(); bytes.len() / std::mem::size_of::<T>()];
            let dest: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
            dest.copy_from_slice(bytes);
            if cfg!(target_endian = "big") {
                for x in bytemuck::cast_slice_mut::<T, u8>(&mut out).chunks_exact_mut(std::mem::size_of::<T>()) {
                    x.reverse();
                }
            }
            out
        }
        Ok(match dtype {
            DataType::Bool => TensorData::Bool(
                bytes
                    .iter()
                    .map(|&b| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        other => Err(TensorError::BadBool(other)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            DataType::U8 => TensorData::U8(bytes.to_vec()),
            DataType::I8 => TensorData::I8(copy(bytes)),
            DataType::U16 => TensorData::U16(copy(bytes)),
            DataType::U32 => TensorData::U32(copy(bytes)),
            DataType::U64 => TensorData::U64(copy(bytes)),
            DataType::I16 => TensorData::I16(copy(bytes)),
            DataType::I32 => TensorData::I32(copy(bytes)),
            DataType::I64 => TensorData::I64(copy(bytes)),
            DataType::F16 => TensorData::F16(copy(bytes)),
            DataType::F32 => TensorData::F32(copy(bytes)),
            DataType::F64 => TensorData::F64(copy(bytes)),
            DataType::Bytes => unreachable!("BYTES has no fixed size and was decoded above"),
        })
    }

    /// BYTES elements in the binary encoding, each a 4-byte little-endian length and its bytes.
    fn from_length_prefixed(mut bytes: &[u8]) -> Result<Self, TensorError> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
                return Err(TensorError::BytesTruncated(bytes.len()));
            };
            let claimed = u32::from_le_bytes(*len);
            let Some((element, rest)) = rest.split_at_checked(claimed as usize) else {
                return Err(TensorError::BytesOverrun {
                    index: out.len(),
                    claimed: claimed.into(),
                    remaining: rest.len(),
                });
            };
            out.push(element.to_vec());
            bytes = rest;
        }
        Ok(TensorData::Bytes(out))
    }

    /// Appends the little-endian binary encoding of every element to `out`.
    pub fn write_le_bytes(&self, out: &mut Vec<u8>) {
        fn put<T: bytemuck::Pod>(out: &mut Vec<u8>, v: &[T]) {
            let start = out.len();
            out.extend_from_slice(bytemuck::cast_slice(v));
            if cfg!(target_endian = "big") {
                for x in out[start..].chunks_exact_mut(std::mem::size_of::<T>()) {
                    x.reverse();
                }
            }
        }
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|&b| b as u8)),
            TensorData::U8(v) => out.extend_from_slice(v),
            TensorData::I8(v) => put(out, v),
            TensorData::U16(v) => put(out, v),
            TensorData::U32(v) => put(out, v),
            TensorData::U64(v) => put(out, v),
            TensorData::I16(v) => put(out, v),
            TensorData::I32(v) => put(out, v),
            TensorData::I64(v) => put(out, v),
            TensorData::F16(v) => put(out, v),
            TensorData::F32(v) => put(out, v),
            TensorData::F64(v) => put(out, v),
            TensorData::Bytes(v) => {
                for element in v {
                    // An element is bounded by the body limit, far below 4 GiB.
                    let len = u32::try_from(element.len()).expect("a BYTES element under 4 GiB");
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(element);
                }
            }
        }
    }
}

/// A named tensor: what a request carries in and a response carries out.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub data: TensorData,
}

impl Tensor {
    /// Builds a tensor, checking that `shape` is non-negative and holds exactly `data.len()` elements.
    pub fn new(name: impl Into<String>, shape: Vec<i64>, data: TensorData) -> Result<Self, TensorError> {
        let expected = element_count(&shape)?;
        if expected != data.len() as u64 {
            return Err(TensorError::LengthMismatch { shape, expected, got: data.len() });
        }
        Ok(Tensor { name: name.into(), shape, data })
    }

    /// The datatype of the elements.
    pub fn dtype(&self) -> DataType {
        self.data.dtype()
    }
}

/// Number of elements a shape holds; saturates instead of overflowing on absurd shapes.
pub(crate) fn element_count(shape: &[i64]) -> Result<u64, TensorError> {
    shape.iter().try_fold(1u64, |acc, &d| {
        if d < 0 { Err(TensorError::NegativeDim { shape: shape.to_vec() }) } else { Ok(acc.saturating_mul(d as u64)) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip_every_dtype() {
        for dtype in DataType::ALL {
            let n = 5usize;
            let Some(size) = dtype.size_in_bytes() else { continue };
            let bytes: Vec<u8> = (0..n * size)
                .map(|i| if dtype == DataType::Bool { (i % 2) as u8 } else { (i * 7 % 251) as u8 })
                .collect();
            let data = TensorData::from_le_bytes(dtype, &bytes).expect("valid bytes");
            assert_eq!(data.dtype(), dtype);
            assert_eq!(data.len(), n);
            let mut back = Vec::new();
            data.write_le_bytes(&mut back);
            assert_eq!(back, bytes, "{dtype}");
        }
    }

    #[test]
    fn ragged_and_bad_bool_bytes_are_refused() {
        assert!(matches!(
            TensorData::from_le_bytes(DataType::F32, &[0; 6]),
            Err(TensorError::RaggedBytes { got: 6, .. })
        ));
        assert_eq!(TensorData::from_le_bytes(DataType::Bool, &[0, 2]), Err(TensorError::BadBool(2)));
    }

    #[test]
    fn bytes_elements_are_length_prefixed() {
        let wire =
            [&3u32.to_le_bytes()[..], b"cat", &0u32.to_le_bytes(), &2u32.to_le_bytes(), "\u{e9}".as_bytes()].concat();
        let data = TensorData::from_le_bytes(DataType::Bytes, &wire).expect("valid");
        assert_eq!(data, TensorData::Bytes(vec![b"cat".to_vec(), vec![], "\u{e9}".as_bytes().to_vec()]));
        assert_eq!(data.len(), 3);
        let mut back = Vec::new();
        data.write_le_bytes(&mut back);
        assert_eq!(back, wire);
        assert_eq!(TensorData::from_le_bytes(DataType::Bytes, &[]), Ok(TensorData::Bytes(vec![])));
    }

    #[test]
    fn malformed_bytes_lengths_are_refused() {
        let over = [&5u32.to_le_bytes()[..], b"cat"].concat();
        assert_eq!(
            TensorData::from_le_bytes(DataType::Bytes, &over),
            Err(TensorError::BytesOverrun { index: 0, claimed: 5, remaining: 3 })
        );
        let huge = [&3u32.to_le_bytes()[..], b"cat", &u32::MAX.to_le_bytes()].concat();
        assert!(matches!(
            TensorData::from_le_bytes(DataType::Bytes, &huge),
            Err(TensorError::BytesOverrun { index: 1, remaining: 0, .. })
        ));
        let short = [&1u32.to_le_bytes()[..], b"a", &[7, 0]].concat();
        let err = TensorData::from_le_bytes(DataType::Bytes, &short).expect_err("truncated");
        assert_eq!(err, TensorError::BytesTruncated(2));
        assert!(err.to_string().contains("4-byte little-endian length"), "{err}");
    }

    #[test]
    fn concat_and_slice_are_inverse() {
        let a = TensorData::I32(vec![1, 2, 3]);
        let b = TensorData::I32(vec![4, 5]);
        let joined = TensorData::concat([&a, &b]).expect("same dtype");
        assert_eq!(joined, TensorData::I32(vec![1, 2, 3, 4, 5]));
        assert_eq!(joined.slice(0..3), a);
        assert_eq!(joined.slice(3..5), b);
        assert_eq!(joined.slice(4..99), TensorData::I32(vec![5]));
        assert!(TensorData::concat([&a, &TensorData::F32(vec![1.0])]).is_none());
    }

    #[test]
    fn shape_must_match_length() {
        let ok = Tensor::new("x", vec![2, 2], TensorData::F32(vec![0.0; 4]));
        assert!(ok.is_ok());
        let bad = Tensor::new("x", vec![2, 3], TensorData::F32(vec![0.0; 4]));
        assert!(matches!(bad, Err(TensorError::LengthMismatch { expected: 6, got: 4, .. })));
        let neg = Tensor::new("x", vec![-1, 4], TensorData::F32(vec![0.0; 4]));
        assert!(matches!(neg, Err(TensorError::NegativeDim { .. })));
    }
}
