//! Minimum-cost bipartite assignment, returning exactly what `scipy.optimize.linear_sum_assignment` returns.
//!
//! The refinement losses (spec §4, §5) match pseudo masks to slots with SciPy's solver, and when costs tie the
//! solver's own tie-breaking decides which slot a mask gets. To reproduce those decisions, this module runs the
//! same algorithm SciPy runs (`rectangular_lsap.cpp`: the shortest-augmenting-path method of Crouse, *On
//! implementing 2D rectangular assignment algorithms*, IEEE TAES 52(4), 2016, with dual variables and
//! Dijkstra-like column scans), with the details that fix its choices:
//!
//! * a matrix with more rows than columns is solved transposed, and the pairs are then reported in ascending
//!   row order;
//! * rows are augmented in index order; within one augmentation the unscanned columns are kept in a list
//!   initialised in *reverse* index order and compacted by moving its last entry into the taken slot;
//! * the next column is the one with the strictly smallest tentative path cost, a tie going to an unassigned
//!   column when the current best is assigned (so an all-equal matrix yields the identity);
//! * costs are `f64` (SciPy converts its input to `float64`); callers that reproduce the reference's
//!   float32-rounded costs convert with [`linear_sum_assignment_f32`].
//!
//! Why not a crate: `pathfinding::kuhn_munkres` maximises integer-like weights on square-or-wide matrices with
//! the classical O(n³) Hungarian method, whose choices between equal-cost assignments differ from SciPy's; no
//! other maintained crate implements SciPy's variant. Both the result (an optimal assignment) and SciPy's exact
//! pairs on ties are checked in `tests/refine_parity.rs` against brute force and SciPy fixtures.
//!
//! Invariants of the result: `min(rows, cols)` pairs, rows ascending and distinct, columns distinct; an empty
//! matrix (0 rows or 0 columns) gives no pairs. NaN or −∞ costs are rejected, as SciPy rejects them; +∞ marks a
//! forbidden pair, and a matrix with no finite full assignment is reported infeasible.

/// Why an assignment could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AssignmentError {
    #[error("cost matrix of {rows}x{cols} needs {expected} entries, got {actual}")]
    Shape {
        rows: usize,
        cols: usize,
        expected: usize,
        actual: usize,
    },
    #[error("cost matrix entry ({row}, {col}) is {value}; NaN and -inf are not valid costs")]
    InvalidCost { row: usize, col: usize, value: f64 },
    #[error("cost matrix of {rows}x{cols} has no assignment of finite cost")]
    Infeasible { rows: usize, cols: usize },
}

/// Assignment of minimal total cost for a row-major `rows`×`cols` matrix, as `(row, col)` pairs in ascending
/// row order; identical to `scipy.optimize.linear_sum_assignment(cost)` including its choice among ties.
pub fn linear_sum_assignment(cost: &[f64], rows: usize, cols: usize) -> Result<Vec<(usize, usize)>, AssignmentError> {
    if cost.len() != rows * cols {
        return Err(AssignmentError::Shape {
            rows,
            cols,
            expected: rows * cols,
            actual: cost.len(),
        });
    }
    if let Some(index) = cost.iter().position(|&c| c.is_nan() || c == f64::NEG_INFINITY) {
        return Err(AssignmentError::InvalidCost {
            row: index / cols,
            col: index % cols,
            value: cost[index],
        });
    }
    if rows == 0 || cols == 0 {
        return Ok(Vec::new());
    }
    let transpose = cols < rows;
    let (nr, nc, matrix): (usize, usize, Vec<f64>) = if transpose {
        let transposed = (0..cols)
            .flat_map(|c| (0..rows).map(move |r| cost[r * cols + c]))
            .collect();
        (cols, rows, transposed)
    } else {
        (rows, cols, cost.to_vec())
    };
    let col4row = solve_wide(&matrix, nr, nc).ok_or(AssignmentError::Infeasible { rows, cols })?;
    Ok(if transpose {
        // Rows of the solved problem are the original columns; report by ascending original row.
        let mut pairs: Vec<(usize, usize)> = col4row.iter().enumerate().map(|(c, &r)| (r, c)).collect();
        pairs.sort_unstable();
        pairs
    } else {
        col4row.into_iter().enumerate().collect()
    })
}

/// [`linear_sum_assignment`] on float32 costs (widened exactly to f64, as NumPy does when SciPy converts).
pub fn linear_sum_assignment_f32(
    cost: &[f32],
    rows: usize,
    cols: usize,
) -> Result<Vec<(usize, usize)>, AssignmentError> {
    let widened: Vec<f64> = cost.iter().map(|&c| f64::from(c)).collect();
    linear_sum_assignment(&widened, rows, cols)
}

/// Solves `nr` ≤ `nc`: returns the column of every row, or `None` when infeasible.
fn solve_wide(cost: &[f64], nr: usize, nc: usize) -> Option<Vec<usize>> {
    let mut u = vec![0.0f64; nr];
    let mut v = vec![0.0f64; nc];
    let mut shortest = vec![f64::INFINITY; nc];
    let mut path = vec![usize::MAX; nc];
    let mut col4row = vec![usize::MAX; nr];
    let mut row4col = vec![usize::MAX; nc];
    let mut scanned_rows = vec![false; nr];
    let mut scanned_cols = vec![false; nc];
    let mut remaining = vec![0usize; nc];

    for current_row in 0..nr {
        // Shortest augmenting path from `current_row` to an unassigned column.
        let mut min_value = 0.0f64;
        let mut num_remaining = nc;
        for (it, slot) in remaining.iter_mut().enumerate() {
            *slot = nc - it - 1;
        }
        scanned_rows.fill(false);
        scanned_cols.fill(false);
        shortest.fill(f64::INFINITY);
        let mut i = current_row;
        let sink = loop {
            let mut index = usize::MAX;
            let mut lowest = f64::INFINITY;
            scanned_rows[i] = true;
            for (it, &j) in remaining[..num_remaining].iter().enumerate() {
                let reduced = min_value + cost[i * nc + j] - u[i] - v[j];
                if reduced < shortest[j] {
                    path[j] = i;
                    shortest[j] = reduced;
                }
                if shortest[j] < lowest || (shortest[j] == lowest && row4col[j] == usize::MAX) {
                    lowest = shortest[j];
                    index = it;
                }
            }
            min_value = lowest;
            if min_value == f64::INFINITY {
                return None;
            }
            let j = remaining[index];
            scanned_cols[j] = true;
            num_remaining -= 1;
            remaining[index] = remaining[num_remaining];
            if row4col[j] == usize::MAX {
                break j;
            }
            i = row4col[j];
        };

        // Dual update.
        u[current_row] += min_value;
        for r in 0..nr {
            if scanned_rows[r] && r != current_row {
                u[r] += min_value - shortest[col4row[r]];
            }
        }
        for c in 0..nc {
            if scanned_cols[c] {
                v[c] -= min_value - shortest[c];
            }
        }

        // Augment along the path.
        let mut j = sink;
        loop {
            let r = path[j];
            row4col[j] = r;
            std::mem::swap(&mut col4row[r], &mut j);
            if r == current_row {
                break;
            }
        }
    }
    Some(col4row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scipy_documentation_example() {
        let cost = [4.0, 1.0, 3.0, 2.0, 0.0, 5.0, 3.0, 2.0, 2.0];
        assert_eq!(
            linear_sum_assignment(&cost, 3, 3).expect("solve"),
            vec![(0, 1), (1, 0), (2, 2)]
        );
    }

    #[test]
    fn all_equal_gives_identity_in_both_orientations() {
        assert_eq!(
            linear_sum_assignment(&[1.0; 6], 2, 3).expect("wide"),
            vec![(0, 0), (1, 1)]
        );
        assert_eq!(
            linear_sum_assignment(&[1.0; 6], 3, 2).expect("tall"),
            vec![(0, 0), (1, 1)]
        );
    }

    #[test]
    fn empty_and_invalid_inputs() {
        assert_eq!(linear_sum_assignment(&[], 0, 5).expect("empty"), vec![]);
        assert_eq!(linear_sum_assignment(&[], 3, 0).expect("empty"), vec![]);
        assert!(matches!(
            linear_sum_assignment(&[1.0, f64::NAN], 1, 2),
            Err(AssignmentError::InvalidCost { row: 0, col: 1, .. })
        ));
        assert!(matches!(
            linear_sum_assignment(&[1.0], 1, 2),
            Err(AssignmentError::Shape { .. })
        ));
        let inf = f64::INFINITY;
        assert_eq!(
            linear_sum_assignment(&[inf, inf, 1.0, inf], 2, 2),
            Err(AssignmentError::Infeasible { rows: 2, cols: 2 })
        );
        assert_eq!(
            linear_sum_assignment(&[inf, 1.0, 2.0, inf], 2, 2).expect("feasible"),
            vec![(0, 1), (1, 0)]
        );
    }
}
