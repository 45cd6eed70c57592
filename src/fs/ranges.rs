//! `RangeSet`: a set of byte offsets kept as sorted, disjoint, non-adjacent half-open ranges.
//! Staging files use it to know which bytes they hold and which a program changed.

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    /// Adds `[start, end)`, merging with what it touches.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let (mut start, mut end) = (start, end);
        // Ranges wholly before `start` (not even adjacent) stay; so do those wholly after `end`.
        let first = self.ranges.partition_point(|r| r.1 < start);
        let last = self.ranges.partition_point(|r| r.0 <= end);
        if first < last {
            start = start.min(self.ranges[first].0);
            end = end.max(self.ranges[last - 1].1);
        }
        self.ranges.splice(first..last, [(start, end)]);
    }

    /// Drops everything at or beyond `len`.
    pub fn clip(&mut self, len: u64) {
        self.ranges.retain(|r| r.0 < len);
        if let Some(last) = self.ranges.last_mut() {
            last.1 = last.1.min(len);
        }
    }

    pub fn clear(&mut self) {
        self.ranges.clear();
    }

    /// The parts of `[start, end)` not in the set, in order.
    pub fn missing(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = start;
        let first = self.ranges.partition_point(|r| r.1 <= start);
        for &(a, b) in &self.ranges[first..] {
            if a >= end {
                break;
            }
            if a > at {
                out.push((at, a));
            }
            at = at.max(b);
        }
        if at < end {
            out.push((at, end));
        }
        out
    }

    /// Whether any offset of `[start, end)` is in the set.
    pub fn overlaps(&self, start: u64, end: u64) -> bool {
        let first = self.ranges.partition_point(|r| r.1 <= start);
        self.ranges.get(first).is_some_and(|r| r.0 < end)
    }

    /// The first offset at or after `at` that is in the set.
    pub fn next_start(&self, at: u64) -> Option<u64> {
        let i = self.ranges.partition_point(|r| r.1 <= at);
        self.ranges.get(i).map(|r| r.0.max(at))
    }

    /// Bytes in the set.
    pub fn total(&self) -> u64 {
        self.ranges.iter().map(|r| r.1 - r.0).sum()
    }

    pub fn count(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_merge_and_report_gaps() {
        let mut s = RangeSet::default();
        s.insert(10, 20);
        s.insert(30, 40);
        s.insert(20, 25); // adjacent: merges
        assert_eq!(s.missing(0, 50), vec![(0, 10), (25, 30), (40, 50)]);
        s.insert(5, 35);
        assert_eq!(s.count(), 1);
        assert_eq!(s.total(), 35);
        assert!(s.overlaps(39, 100));
        assert!(!s.overlaps(40, 100));
        assert_eq!(s.next_start(0), Some(5));
        assert_eq!(s.next_start(12), Some(12));
        assert_eq!(s.next_start(40), None);
        s.clip(12);
        assert_eq!(s.missing(0, 20), vec![(0, 5), (12, 20)]);
    }

    #[test]
    fn random_inserts_match_a_bitmap() {
        let mut s = RangeSet::default();
        let mut bits = [false; 200];
        let mut x: u64 = 7;
        for _ in 0..300 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = (x >> 33) % 200;
            let b = (a + (x >> 20) % 17).min(200);
            s.insert(a, b);
            for bit in &mut bits[a as usize..b as usize] {
                *bit = true;
            }
            let expect: u64 = bits.iter().filter(|b| **b).count() as u64;
            assert_eq!(s.total(), expect);
            for gap in s.missing(0, 200) {
                assert!(bits[gap.0 as usize..gap.1 as usize].iter().all(|b| !b));
            }
        }
    }
}
