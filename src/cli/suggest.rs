//! "Did you mean …?" suggestions: the closest known name to one that was not found.
//!
//! One home for the edit distance used by `check` (missing dependencies) and the schema
//! validator (unknown fields). The distance is computed only inside a band of the allowed
//! difference, so a comparison costs length × allowance rather than length², and a
//! [`Suggester`] remembers what it answered and stops looking once it has spent a fixed amount
//! of work: a suggestion is a courtesy, never a reason for `check` to take minutes over a
//! directory with thousands of unknown names.

use std::collections::HashMap;

/// How far a candidate may be from the word and still be suggested: two edits, or a quarter
/// of the candidate's length for long names.
pub fn allowance(candidate: &str) -> usize {
    2.max(candidate.chars().count() / 4)
}

/// Levenshtein distance between `a` and `b` when it is at most `limit`, else `None`. Also returns
/// how many table cells were computed, the unit of work a [`Suggester`] budgets.
pub fn edit_distance_within(a: &str, b: &str, limit: usize) -> (Option<usize>, u64) {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > limit {
        return (None, 0);
    }
    // Cells outside the band |i - j| <= limit can only hold distances above the limit; they are
    // kept at `over` so every minimum below stays correct.
    let over = limit + 1;
    let mut previous: Vec<usize> = (0..=b.len()).map(|j| j.min(over)).collect();
    let mut current = vec![over; b.len() + 1];
    let mut cells = 0u64;
    for i in 1..=a.len() {
        let low = i.saturating_sub(limit);
        let high = (i + limit).min(b.len());
        current.fill(over);
        let mut row_min = over;
        if low == 0 {
            current[0] = i.min(over);
            row_min = current[0];
        }
        for j in low.max(1)..=high {
            let substitution = previous[j - 1] + usize::from(a[i - 1] != b[j - 1]);
            let value = substitution
                .min(previous[j] + 1)
                .min(current[j - 1] + 1)
                .min(over);
            current[j] = value;
            row_min = row_min.min(value);
        }
        cells += (high + 1 - low.max(1)) as u64;
        if row_min > limit {
            return (None, cells);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    let distance = previous[b.len()];
    ((distance <= limit).then_some(distance), cells)
}

/// The closest candidate within its [`allowance`], ties to the smaller candidate. `normalize`
/// is applied to both sides before comparing (e.g. lower-casing field names).
pub fn closest<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
    normalize: impl Fn(&str) -> String,
) -> Option<&'a str> {
    let word = normalize(word);
    candidates
        .into_iter()
        .filter_map(|c| {
            let (d, _) = edit_distance_within(&word, &normalize(c), allowance(c));
            d.map(|d| (d, c))
        })
        .min()
        .map(|(_, c)| c)
}

/// Table cells a [`Suggester`] computes before it stops suggesting: about a second of a debug
/// build, far more than any directory a person would read the suggestions of needs.
pub const WORK_BUDGET: u64 = 50_000_000;

/// Suggestions for many missing names against one set of candidates, each answered once, with
/// the total work bounded by [`WORK_BUDGET`].
#[derive(Debug)]
pub struct Suggester<'a> {
    candidates: Vec<&'a str>,
    answered: HashMap<String, Option<&'a str>>,
    spent: u64,
    budget: u64,
}

impl<'a> Suggester<'a> {
    pub fn new(candidates: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with_budget(candidates, WORK_BUDGET)
    }

    pub fn with_budget(candidates: impl IntoIterator<Item = &'a str>, budget: u64) -> Self {
        let mut candidates: Vec<&'a str> = candidates.into_iter().collect();
        candidates.sort_unstable();
        candidates.dedup();
        Self {
            candidates,
            answered: HashMap::new(),
            spent: 0,
            budget,
        }
    }

    /// The closest candidate to `word`, if any is within its allowance and the budget is not
    /// spent. An exact match is returned as is.
    pub fn suggest(&mut self, word: &str) -> Option<&'a str> {
        if let Some(answer) = self.answered.get(word) {
            return *answer;
        }
        let mut best: Option<(usize, &'a str)> = None;
        for &candidate in &self.candidates {
            if self.spent >= self.budget {
                // Out of budget: no answer is remembered, so nothing half-searched is reused.
                return best.map(|(_, c)| c);
            }
            let limit = match best {
                // A later candidate must beat the best so far to matter.
                Some((d, _)) => allowance(candidate).min(d),
                None => allowance(candidate),
            };
            let (distance, cells) = edit_distance_within(word, candidate, limit);
            self.spent += cells;
            if let Some(d) = distance
                && best.is_none_or(|(bd, bc)| (d, candidate) < (bd, bc))
            {
                best = Some((d, candidate));
            }
        }
        let answer = best.map(|(_, c)| c);
        self.answered.insert(word.to_string(), answer);
        answer
    }

    /// Table cells computed so far.
    pub fn spent(&self) -> u64 {
        self.spent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The textbook full-table distance, as the reference for the banded one.
    fn full_distance(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut table = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in table.iter_mut().enumerate() {
            row[0] = i;
        }
        table[0] = (0..=b.len()).collect();
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                table[i][j] = (table[i - 1][j - 1] + usize::from(a[i - 1] != b[j - 1]))
                    .min(table[i - 1][j] + 1)
                    .min(table[i][j - 1] + 1);
            }
        }
        table[a.len()][b.len()]
    }

    #[test]
    fn known_distances() {
        assert_eq!(edit_distance_within("kitten", "sitting", 3).0, Some(3));
        assert_eq!(edit_distance_within("kitten", "sitting", 2).0, None);
        assert_eq!(edit_distance_within("", "abc", 3).0, Some(3));
        assert_eq!(edit_distance_within("dependsOn", "dependsOn", 0).0, Some(0));
        assert_eq!(edit_distance_within("dependson", "dependsOn", 2).0, Some(1));
    }

    #[test]
    fn closest_prefers_the_nearest_then_the_smaller_name() {
        let fields = ["dependsOn", "dependencies", "port"];
        assert_eq!(
            closest("dependsOm", fields, str::to_string),
            Some("dependsOn")
        );
        assert_eq!(closest("prot", fields, str::to_string), Some("port"));
        assert_eq!(closest("image", fields, str::to_string), None);
        assert_eq!(closest("ab", ["ax", "ay"], str::to_string), Some("ax"));
    }

    #[test]
    fn a_missing_name_is_looked_up_once() {
        let names: Vec<String> = (0..100).map(|i| format!("{:0>60}", i)).collect();
        let mut s = Suggester::new(names.iter().map(String::as_str));
        let first = s.suggest(&format!("{:0>59}x", 7));
        let spent = s.spent();
        for _ in 0..31 {
            assert_eq!(s.suggest(&format!("{:0>59}x", 7)), first);
        }
        assert_eq!(
            s.spent(),
            spent,
            "a repeated name must not be compared again"
        );
    }

    #[test]
    fn the_work_is_bounded_whatever_the_input() {
        // 3,000 distinct unknown 60-character names against 3,000 similar ones: unbounded,
        // this is 9 million comparisons.
        let names: Vec<String> = (0..3000).map(|i| format!("feature-{i:0>52}")).collect();
        let mut s = Suggester::with_budget(names.iter().map(String::as_str), 1_000_000);
        for i in 0..3000 {
            s.suggest(&format!("missing-{i:0>52}"));
        }
        assert!(s.spent() <= 1_000_000 + 60 * 31, "spent {}", s.spent());
    }

    proptest! {
        #[test]
        fn banded_distance_agrees_with_the_full_table(
            a in "[a-c]{0,12}", b in "[a-c]{0,12}", limit in 0usize..14,
        ) {
            let full = full_distance(&a, &b);
            let (banded, _) = edit_distance_within(&a, &b, limit);
            prop_assert_eq!(banded, (full <= limit).then_some(full));
        }

        #[test]
        fn the_suggester_agrees_with_closest(
            word in "[a-d]{1,8}", names in prop::collection::vec("[a-d]{1,8}", 0..12),
        ) {
            let mut s = Suggester::new(names.iter().map(String::as_str));
            prop_assert_eq!(
                s.suggest(&word),
                closest(&word, names.iter().map(String::as_str), str::to_string)
            );
        }
    }
}
