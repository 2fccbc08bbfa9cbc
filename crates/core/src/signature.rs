use serde::{Deserialize, Serialize};

use crate::{DataType, Tensor};

/// Name, datatype and shape of one model input or output. A dimension of `-1` is dynamic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
    /// Symbolic names of the dimensions, where the model names them (`"batch"`), else empty
    /// strings; may be empty altogether. Inputs that share a name must agree on its size.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dim_names: Vec<String>,
}

impl TensorSpec {
    /// A spec without dimension names.
    pub fn new(name: impl Into<String>, datatype: DataType, shape: Vec<i64>) -> Self {
        TensorSpec { name: name.into(), datatype, shape, dim_names: Vec::new() }
    }
}

/// A model's inputs and outputs, in the order the model declares them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelSignature {
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// A request that the model cannot take; every variant names what is wrong (it becomes a 400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("unknown input '{name}' (the model's inputs are: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input '{0}' is given more than once")]
    DuplicateInput(String),
    #[error("missing input '{name}' (the model's inputs are: {expected})")]
    MissingInput { name: String, expected: String },
    #[error("input '{name}' has datatype {got} but the model expects {expected}")]
    WrongDatatype { name: String, expected: DataType, got: DataType },
    #[error("input '{name}' has shape {got:?} but the model expects {expected:?} (-1 is any size)")]
    WrongShape { name: String, expected: Vec<i64>, got: Vec<i64> },
    #[error("dimension '{dim}' is {first_size} in input '{first}' but {second_size} in input '{second}'")]
    DimMismatch { dim: String, first: String, first_size: i64, second: String, second_size: i64 },
    #[error("unknown output '{name}' (the model's outputs are: {expected})")]
    UnknownOutput { name: String, expected: String },
}

fn names(specs: &[TensorSpec]) -> String {
    specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
}

/// Datatype and shape of one input against its spec.
fn check(spec: &TensorSpec, tensor: &Tensor) -> Result<(), ValidationError> {
    if tensor.dtype() != spec.datatype {
        return Err(ValidationError::WrongDatatype {
            name: tensor.name.clone(),
            expected: spec.datatype,
            got: tensor.dtype(),
        });
    }
    if !shape_fits(&spec.shape, &tensor.shape) {
        return Err(ValidationError::WrongShape {
            name: tensor.name.clone(),
            expected: spec.shape.clone(),
            got: tensor.shape.clone(),
        });
    }
    Ok(())
}

/// A shape fits a spec when the ranks agree and every fixed dimension matches.
fn shape_fits(spec: &[i64], got: &[i64]) -> bool {
    spec.len() == got.len() && spec.iter().zip(got).all(|(&s, &g)| s < 0 || s == g)
}

impl ModelSignature {
    /// Checks request inputs against the signature and returns them in the model's input order.
    pub fn order_inputs(&self, inputs: Vec<Tensor>) -> Result<Vec<Tensor>, ValidationError> {
        // Clients nearly always send every input in the model's order: check them where they are.
        let in_order =
            inputs.len() == self.inputs.len() && inputs.iter().zip(&self.inputs).all(|(t, s)| t.name == s.name);
        if in_order {
            for (tensor, spec) in inputs.iter().zip(&self.inputs) {
                check(spec, tensor)?;
            }
            self.check_named_dims(&inputs)?;
            return Ok(inputs);
        }
        let mut slots: Vec<Option<Tensor>> = vec![None; self.inputs.len()];
        for tensor in inputs {
            let Some(idx) = self.inputs.iter().position(|s| s.name == tensor.name) else {
                return Err(ValidationError::UnknownInput { name: tensor.name, expected: names(&self.inputs) });
            };
            check(&self.inputs[idx], &tensor)?;
            if slots[idx].is_some() {
                return Err(ValidationError::DuplicateInput(tensor.name));
            }
            slots[idx] = Some(tensor);
        }
        let ordered = slots
            .into_iter()
            .zip(&self.inputs)
            .map(|(slot, spec)| {
                slot.ok_or_else(|| ValidationError::MissingInput {
                    name: spec.name.clone(),
                    expected: names(&self.inputs),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.check_named_dims(&ordered)?;
        Ok(ordered)
    }

    /// Inputs in signature order must agree on every dimension they share by name (two inputs
    /// with a `batch` dimension must have the same number of rows). No allocation when they do.
    fn check_named_dims(&self, inputs: &[Tensor]) -> Result<(), ValidationError> {
        let named = |i: usize| {
            self.inputs[i]
                .dim_names
                .iter()
                .zip(&inputs[i].shape)
                .filter(|(n, _)| !n.is_empty())
                .map(move |(n, &size)| (i, n, size))
        };
        for i in 0..inputs.len() {
            for (_, dim, size) in named(i) {
                for j in 0..i {
                    if let Some((_, _, first_size)) = named(j).find(|(_, n, s)| *n == dim && *s != size) {
                        return Err(ValidationError::DimMismatch {
                            dim: dim.clone(),
                            first: inputs[j].name.clone(),
                            first_size,
                            second: inputs[i].name.clone(),
                            second_size: size,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Maps requested output names to output indices; no names means every output.
    pub fn select_outputs<'a>(
        &self,
        requested: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<usize>, ValidationError> {
        let mut picked = Vec::new();
        for name in requested {
            let idx = self.outputs.iter().position(|s| s.name == name).ok_or_else(|| {
                ValidationError::UnknownOutput { name: name.to_owned(), expected: names(&self.outputs) }
            })?;
            if !picked.contains(&idx) {
                picked.push(idx);
            }
        }
        if picked.is_empty() {
            picked = (0..self.outputs.len()).collect();
        }
        Ok(picked)
    }

    /// Index of the input named `name`.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|s| s.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorData;

    fn sig() -> ModelSignature {
        ModelSignature {
            inputs: vec![
                TensorSpec {
                    name: "a".into(),
                    datatype: DataType::F32,
                    shape: vec![-1, 3],
                    dim_names: vec!["batch".into(), String::new()],
                },
                TensorSpec {
                    name: "b".into(),
                    datatype: DataType::I64,
                    shape: vec![-1],
                    dim_names: vec!["batch".into()],
                },
            ],
            outputs: vec![
                TensorSpec::new("y", DataType::F32, vec![-1, 1]),
                TensorSpec::new("z", DataType::I64, vec![-1]),
            ],
        }
    }

    fn a(rows: i64) -> Tensor {
        Tensor::new("a", vec![rows, 3], TensorData::F32(vec![0.0; rows as usize * 3])).expect("valid")
    }
    fn b(rows: i64) -> Tensor {
        Tensor::new("b", vec![rows], TensorData::I64(vec![0; rows as usize])).expect("valid")
    }

    #[test]
    fn orders_inputs_by_signature() {
        let got = sig().order_inputs(vec![b(2), a(2)]).expect("valid");
        assert_eq!(got[0].name, "a");
        assert_eq!(got[1].name, "b");
    }

    #[test]
    fn refuses_what_the_model_cannot_take() {
        let s = sig();
        assert!(matches!(s.order_inputs(vec![a(1)]), Err(ValidationError::MissingInput { name, .. }) if name == "b"));
        let mut c = a(1);
        c.name = "c".into();
        assert!(matches!(s.order_inputs(vec![c]), Err(ValidationError::UnknownInput { .. })));
        assert!(matches!(s.order_inputs(vec![a(1), a(1), b(1)]), Err(ValidationError::DuplicateInput(_))));
        let wrong_shape = Tensor::new("a", vec![1, 4], TensorData::F32(vec![0.0; 4])).expect("valid");
        assert!(matches!(s.order_inputs(vec![wrong_shape, b(1)]), Err(ValidationError::WrongShape { .. })));
        let wrong_type = Tensor::new("b", vec![1], TensorData::I32(vec![0])).expect("valid");
        assert!(matches!(s.order_inputs(vec![a(1), wrong_type]), Err(ValidationError::WrongDatatype { .. })));
        // Both inputs name their first dimension `batch`: 2 rows and 1 row cannot go together,
        // whichever order they come in.
        for inputs in [vec![a(2), b(1)], vec![b(1), a(2)]] {
            let err = s.order_inputs(inputs).expect_err("batch sizes differ");
            assert!(err.to_string().contains("dimension 'batch' is 2 in input 'a' but 1 in input 'b'"), "{err}");
        }
    }

    #[test]
    fn selects_outputs() {
        let s = sig();
        assert_eq!(s.select_outputs([]).expect("valid"), vec![0, 1]);
        assert_eq!(s.select_outputs(["z"]).expect("valid"), vec![1]);
        assert!(matches!(s.select_outputs(["nope"]), Err(ValidationError::UnknownOutput { .. })));
    }
}
