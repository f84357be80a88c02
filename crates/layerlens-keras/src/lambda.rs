//! Keras Lambda layers, which are never executed: their Python bytecode stays
//! unread data (running it is what CVE-2025-1550 and its bypasses exploited).

use base64::Engine;
use layerlens_core::lambda::{CustomOp, LambdaCtx, ShapeCtx};
use layerlens_core::{Error, Result, Shape};
use serde_json::Value;

/// A Keras Lambda imported without a binding: its output shape is known (from
/// its consumers in the config), running it is refused with how to bind it.
#[derive(Debug, Clone)]
pub struct Unbound {
    /// The Keras layer name.
    pub layer: String,
    /// Names the Lambda's bytecode references (a hint of what it computes).
    pub hint: Vec<String>,
    /// Its per-sample output shape, in layerlens' layout.
    pub shape: Shape,
}

impl Unbound {
    /// The message shown when the Lambda would run.
    pub fn message(&self) -> String {
        let hint = if self.hint.is_empty() {
            String::new()
        } else {
            format!(" (its code references: {})", self.hint.join(", "))
        };
        format!(
            "Keras Lambda layer '{}'{hint} is not executed (its Python code is never run); bind it to a layerlens op: --bind {}=BUILTIN(JSON_ARGS), e.g. --bind {}='mean({{\"axes\":[2,3]}})', or ImportOptions::bind in the API",
            self.layer, self.layer, self.layer
        )
    }
}

impl CustomOp for Unbound {
    fn type_name(&self) -> &str {
        "keras_lambda_unbound"
    }
    fn saveable(&self) -> bool {
        false
    }
    fn output_shape(&self, _ctx: &ShapeCtx) -> Option<Result<Shape>> {
        Some(Ok(self.shape.clone()))
    }
    fn forward(
        &self,
        _inputs: &[layerlens_core::candle_core::Tensor],
        _ctx: &LambdaCtx,
    ) -> Result<layerlens_core::candle_core::Tensor> {
        Err(Error::invalid(&self.layer, self.message()))
    }
}

/// Identifiers in a Lambda's marshalled code object (`co_names`, `co_varnames`),
/// read as plain bytes: marshal's short ASCII strings, nothing evaluated.
pub(crate) fn bytecode_names(config: &Value) -> Vec<String> {
    let Some(b64) = find_code(config) else {
        return vec![];
    };
    let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return vec![];
    };
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i + 1 < bytes.len() {
        // TYPE_SHORT_ASCII ('z') and its interned form ('Z'), with or without FLAG_REF.
        if matches!(bytes[i] & 0x7f, b'z' | b'Z') {
            let n = bytes[i + 1] as usize;
            if n >= 2 && i + 2 + n <= bytes.len() {
                let s = &bytes[i + 2..i + 2 + n];
                let ident = s[0].is_ascii_alphabetic() || s[0] == b'_';
                if ident && s.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_') {
                    let s = String::from_utf8_lossy(s).to_string();
                    if !out.contains(&s) {
                        out.push(s);
                    }
                    i += 2 + n;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

fn find_code(config: &Value) -> Option<&str> {
    let f = config.get("function")?;
    match f {
        // Keras 3: {"class_name": "__lambda__", "config": {"value": [code, defaults, closure]}}.
        Value::Object(o) => match o.get("config")?.get("value")? {
            Value::Array(a) => a.first()?.as_str(),
            Value::String(s) => Some(s),
            _ => None,
        },
        // Keras 2: [code, defaults, closure] or the code string itself.
        Value::Array(a) => a.first()?.as_str(),
        Value::String(s) => Some(s),
        _ => None,
    }
}
