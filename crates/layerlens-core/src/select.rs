//! Node selectors (`conv2d`, `layer*.conv1`, `all`) and close-match suggestions.

use crate::error::{Error, Result};
use crate::ir::{Graph, NodeId};

/// One way of naming nodes.
#[derive(Clone, Debug)]
pub enum Selector {
    /// Every node.
    All,
    /// One node by name or alias.
    Exact(String),
    /// Every node whose name (or alias, or layer) matches a glob (`*`, `?`, `[..]`).
    Glob(glob::Pattern),
}

impl Selector {
    /// Parses `all`, a glob (containing `*`, `?` or `[`), or an exact name.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        if s == "all" {
            return Ok(Selector::All);
        }
        if s.contains(['*', '?', '[']) {
            let p = glob::Pattern::new(s)
                .map_err(|e| Error::invalid("selector", format!("bad glob '{s}': {e}")))?;
            return Ok(Selector::Glob(p));
        }
        Ok(Selector::Exact(s.to_string()))
    }

    /// The matching nodes in graph order; an error if none match.
    pub fn resolve(&self, g: &Graph) -> Result<Vec<NodeId>> {
        match self {
            Selector::All => Ok((0..g.nodes.len()).collect()),
            Selector::Exact(name) => Ok(vec![g.find(name)?]),
            Selector::Glob(p) => {
                let mut ids: Vec<NodeId> = g
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| p.matches(&n.name))
                    .map(|(i, _)| i)
                    .collect();
                for (alias, &id) in &g.aliases {
                    if p.matches(alias) && !ids.contains(&id) {
                        ids.push(id);
                    }
                }
                ids.sort_unstable();
                if ids.is_empty() {
                    return Err(Error::unknown("node pattern", p.as_str(), g.all_names()));
                }
                Ok(ids)
            }
        }
    }

    /// Whether this selector picks `node` of `g`, also matching by layer name so
    /// that a hook on a shared layer fires for each of its calls.
    pub(crate) fn matches_node(&self, g: &Graph, id: NodeId) -> bool {
        let n = &g.nodes[id];
        let alias_hit = |f: &dyn Fn(&str) -> bool| g.aliases.iter().any(|(a, &i)| i == id && f(a));
        match self {
            Selector::All => true,
            Selector::Exact(s) => n.name == *s || n.layer == *s || alias_hit(&|a| a == s),
            Selector::Glob(p) => {
                p.matches(&n.name) || p.matches(&n.layer) || alias_hit(&|a| p.matches(a))
            }
        }
    }
}

/// Up to `k` names from `candidates` closest to `name`: substring matches first,
/// then by normalised edit distance, keeping only plausible ones.
pub fn closest<'a>(
    name: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    k: usize,
) -> Vec<String> {
    let lower = name.to_lowercase();
    let mut scored: Vec<(f64, String)> = candidates
        .into_iter()
        .filter_map(|c| {
            let cl = c.to_lowercase();
            let sim = strsim::normalized_damerau_levenshtein(&lower, &cl)
                .max(strsim::jaro_winkler(&lower, &cl) - 0.15);
            let bonus = if !lower.is_empty() && (cl.contains(&lower) || lower.contains(&cl)) {
                0.5
            } else {
                0.0
            };
            let score = sim + bonus;
            (score >= 0.5).then(|| (score, c.to_string()))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(k).map(|(_, s)| s).collect()
}

#[cfg(test)]
mod tests {
    use super::closest;

    #[test]
    fn suggestions_rank_typos_and_substrings_first() {
        let names = ["conv2d", "conv2d_1", "max_pooling2d", "dense", "flatten"];
        let got = closest("conv2", names, 3);
        assert_eq!(got[0], "conv2d");
        assert!(got.contains(&"conv2d_1".to_string()));
        assert!(closest("zzzz", names, 3).is_empty());
        assert_eq!(closest("dens", names, 1), vec!["dense"]);
    }
}
