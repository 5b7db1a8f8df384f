//! The batching planner: which Modbus reads fetch a set of points.
//!
//! Points are grouped by table and sorted by address; a point joins the read before it
//! when it starts no more than the allowed gap after that read's end (overlaps included)
//! and the read stays within the size limit (125 registers / 2000 bits by the protocol,
//! less where configured). Each point then knows its read and its offset in it. Without
//! batching every point is its own read. Pure, so it is tested without a device.

use crate::point::Table;

/// Most registers one read may ask for (function codes 3 and 4).
pub const MAX_REGISTERS_PER_READ: u16 = 125;
/// Most bits one read may ask for (function codes 1 and 2).
pub const MAX_BITS_PER_READ: u16 = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub batching: bool,
    pub max_gap_registers: u16,
    pub max_gap_bits: u16,
    pub max_registers: u16,
    pub max_bits: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            batching: true,
            max_gap_registers: 8,
            max_gap_bits: 64,
            max_registers: MAX_REGISTERS_PER_READ,
            max_bits: MAX_BITS_PER_READ,
        }
    }
}

impl Limits {
    fn gap(&self, t: Table) -> u32 {
        u32::from(if t.is_bits() {
            self.max_gap_bits
        } else {
            self.max_gap_registers
        })
    }

    fn size(&self, t: Table) -> u32 {
        u32::from(if t.is_bits() {
            self.max_bits.min(MAX_BITS_PER_READ)
        } else {
            self.max_registers.min(MAX_REGISTERS_PER_READ)
        })
    }
}

/// A range to read: `count` registers or bits from `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub table: Table,
    pub start: u16,
    pub count: u16,
}

impl Span {
    fn end(&self) -> u32 {
        u32::from(self.start) + u32::from(self.count)
    }
}

/// The reads for a set of points, and where each point's data is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub reads: Vec<Span>,
    /// Per point, in the order given: (index into `reads`, offset within that read).
    pub slots: Vec<(usize, u16)>,
}

impl Plan {
    /// The points (indices) served by read `i`.
    pub fn points_of(&self, i: usize) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, (r, _))| *r == i)
            .map(|(p, _)| p)
            .collect()
    }
}

/// Plans the reads for `points` (each a span of one value).
pub fn plan(points: &[Span], limits: &Limits) -> Result<Plan, String> {
    for p in points {
        if p.count == 0 {
            return Err(format!("{} {}: an empty range", p.table.name(), p.start));
        }
        if u32::from(p.count) > limits.size(p.table) || p.end() > 65_536 {
            return Err(format!(
                "{} {}: {} {} do not fit one read (at most {})",
                p.table.name(),
                p.start,
                p.count,
                p.table.unit(p.count),
                limits.size(p.table)
            ));
        }
    }
    let mut order: Vec<usize> = (0..points.len()).collect();
    if limits.batching {
        order.sort_by_key(|i| {
            (
                points[*i].table,
                points[*i].start,
                u16::MAX - points[*i].count,
            )
        });
    }
    let mut reads: Vec<Span> = Vec::new();
    let mut slots = vec![(0usize, 0u16); points.len()];
    for i in order {
        let p = points[i];
        let joined = limits.batching
            && reads.last_mut().is_some_and(|r| {
                let fits = r.table == p.table
                    && u32::from(p.start) <= r.end() + limits.gap(p.table)
                    && p.end().max(r.end()) - u32::from(r.start) <= limits.size(p.table);
                if fits {
                    let end = p.end().max(r.end());
                    r.count = u16::try_from(end - u32::from(r.start)).unwrap_or(u16::MAX);
                }
                fits
            });
        if !joined {
            reads.push(p);
        }
        let r = reads.len() - 1;
        slots[i] = (r, p.start.saturating_sub(reads[r].start));
    }
    Ok(Plan { reads, slots })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hr(start: u16, count: u16) -> Span {
        Span {
            table: Table::HoldingRegisters,
            start,
            count,
        }
    }

    fn coil(start: u16) -> Span {
        Span {
            table: Table::Coils,
            start,
            count: 1,
        }
    }

    #[test]
    fn contiguous_and_near_points_share_a_read() {
        // int16 @0, uint32 @1, float32 @3, int16 @5: one read of 6 registers.
        let pts = [hr(0, 1), hr(1, 2), hr(3, 2), hr(5, 1)];
        let p = plan(&pts, &Limits::default()).unwrap();
        assert_eq!(p.reads, [hr(0, 6)]);
        assert_eq!(p.slots, [(0, 0), (0, 1), (0, 3), (0, 5)]);
        // A gap of 8 is bridged, 9 is not.
        let p = plan(&[hr(0, 2), hr(10, 1), hr(20, 1)], &Limits::default()).unwrap();
        assert_eq!(p.reads, [hr(0, 11), hr(20, 1)]);
        assert_eq!(p.slots, [(0, 0), (0, 10), (1, 0)]);
    }

    #[test]
    fn order_tables_and_overlaps() {
        // Given out of order, across tables, with two bits of one register.
        let pts = [hr(40, 1), coil(3), hr(2, 2), coil(0), hr(40, 1), hr(0, 1)];
        let p = plan(&pts, &Limits::default()).unwrap();
        assert_eq!(
            p.reads,
            [
                Span {
                    table: Table::Coils,
                    start: 0,
                    count: 4
                },
                hr(0, 4),
                hr(40, 1)
            ]
        );
        assert_eq!(p.slots, [(2, 0), (0, 3), (1, 2), (0, 0), (2, 0), (1, 0)]);
        assert_eq!(p.points_of(2), [0, 4]);
        // A long value that contains a short one.
        let p = plan(&[hr(10, 1), hr(8, 4)], &Limits::default()).unwrap();
        assert_eq!(p.reads, [hr(8, 4)]);
        assert_eq!(p.slots, [(0, 2), (0, 0)]);
    }

    #[test]
    fn protocol_and_configured_limits_split_reads() {
        // 100 Float32 values back to back: 200 registers, at most 125 per read.
        let pts: Vec<Span> = (0..100).map(|i| hr(i * 2, 2)).collect();
        let p = plan(&pts, &Limits::default()).unwrap();
        assert_eq!(p.reads, [hr(0, 124), hr(124, 76)]);
        assert!(p.reads.iter().all(|r| r.count <= MAX_REGISTERS_PER_READ));
        let small = Limits {
            max_registers: 10,
            ..Limits::default()
        };
        let p = plan(&pts[..10], &small).unwrap();
        assert_eq!(p.reads, [hr(0, 10), hr(10, 10)]);
        // 2000 bits per read.
        let bits: Vec<Span> = (0..2500).map(coil).collect();
        let p = plan(&bits, &Limits::default()).unwrap();
        assert_eq!(p.reads.len(), 2);
        assert_eq!(p.reads[0].count, 2000);
        assert_eq!(p.slots[2100], (1, 100));
        // A value larger than a read is refused.
        assert!(
            plan(
                &[hr(0, 4)],
                &Limits {
                    max_registers: 3,
                    ..Limits::default()
                }
            )
            .is_err()
        );
        assert!(plan(&[hr(65_535, 2)], &Limits::default()).is_err());
    }

    #[test]
    fn without_batching_every_point_is_a_read() {
        let off = Limits {
            batching: false,
            ..Limits::default()
        };
        let pts = [hr(1, 2), hr(0, 1), hr(3, 2)];
        let p = plan(&pts, &off).unwrap();
        assert_eq!(p.reads, pts);
        assert_eq!(p.slots, [(0, 0), (1, 0), (2, 0)]);
        // Gap 0 joins only touching ranges.
        let tight = Limits {
            max_gap_registers: 0,
            ..Limits::default()
        };
        let p = plan(&[hr(0, 1), hr(1, 1), hr(3, 1)], &tight).unwrap();
        assert_eq!(p.reads, [hr(0, 2), hr(3, 1)]);
    }
}
