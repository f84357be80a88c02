//! Typed errors. Every error that can come from user input names the node, the
//! layer or the file it is about, so that a message alone is enough to act on.

use crate::shape::Shape;
use std::fmt;

/// The result type used throughout layerlens.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in layerlens-core.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A node, layer or parameter name that does not exist.
    #[error("unknown {kind} '{name}'{}", Suggestions(.suggestions))]
    UnknownName {
        /// What was looked up: "node", "layer", "parameter", "lambda".
        kind: &'static str,
        /// The name as given.
        name: String,
        /// The closest existing names, best first.
        suggestions: Vec<String>,
    },

    /// Two shapes that must agree do not.
    #[error("{node}: {message}")]
    ShapeMismatch {
        /// The node being built (or run) when the mismatch was found.
        node: String,
        /// What disagrees, naming both sides and both shapes.
        message: String,
    },

    /// A layer argument that cannot work (a pooling window of 0, a negative rate, ...).
    #[error("{node}: {message}")]
    InvalidArgument {
        /// The node (or layer) the argument belongs to.
        node: String,
        /// What is wrong and what would be accepted.
        message: String,
    },

    /// A node name given twice.
    #[error("duplicate node name '{0}': node names must be unique")]
    DuplicateName(String),

    /// A runtime input that does not fit the model's declared input.
    #[error("input '{input}' expects {expected}, got {got}{hint}")]
    InputShape {
        /// The input node.
        input: String,
        /// Declared shape (batch shown as N).
        expected: Shape,
        /// Received tensor dims.
        got: String,
        /// An extra hint, e.g. that the tensor looks NHWC.
        hint: String,
    },

    /// A Lambda or custom layer that cannot be saved (a closure), or loaded (unregistered).
    #[error("{0}")]
    Lambda(String),

    /// A saved model file that is malformed, with the file and what is wrong.
    #[error("{path}: {message}")]
    Format {
        /// The file being read.
        path: String,
        /// What is wrong and where.
        message: String,
    },

    /// A failure inside the tensor engine while running a node.
    #[error("{node}: {source}")]
    Node {
        /// The node being executed.
        node: String,
        /// The tensor engine's error.
        #[source]
        source: candle_core::Error,
    },

    /// A failure inside the tensor engine outside of any node.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A download that failed or did not verify, with its URL.
    #[error("{url}: {message}")]
    Download {
        /// What was fetched.
        url: String,
        /// What went wrong, and what to do about it.
        message: String,
    },

    /// An I/O failure, with the path.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Builds an [`Error::UnknownName`] with the closest matches among `candidates`.
    pub fn unknown<'a>(
        kind: &'static str,
        name: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Error::UnknownName {
            kind,
            name: name.to_string(),
            suggestions: crate::select::closest(name, candidates, 5),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(node: impl Into<String>, message: impl Into<String>) -> Self {
        Error::InvalidArgument {
            node: node.into(),
            message: message.into(),
        }
    }

    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(node: impl Into<String>, message: impl Into<String>) -> Self {
        Error::ShapeMismatch {
            node: node.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.display().to_string(),
            source,
        }
    }

    pub(crate) fn format(path: &std::path::Path, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.display().to_string(),
            message: message.into(),
        }
    }
}

struct Suggestions<'a>(&'a [String]);

impl fmt::Display for Suggestions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        write!(f, "; did you mean ")?;
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "'{s}'")?;
        }
        write!(f, "?")
    }
}

/// Attaches a node name to tensor-engine errors.
pub(crate) trait NodeContext<T> {
    fn at_node(self, node: &str) -> Result<T>;
}

impl<T> NodeContext<T> for candle_core::Result<T> {
    fn at_node(self, node: &str) -> Result<T> {
        self.map_err(|source| Error::Node {
            node: node.to_string(),
            source,
        })
    }
}
