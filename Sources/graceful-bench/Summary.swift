/// Percentiles of a set of samples by the nearest-rank method: p99 of fewer than 100 samples is their
/// maximum, never an interpolation below it.
struct Summary {
    let count: Int
    let p50: Double
    let p99: Double
    let max: Double

    /// Samples that are not finite (a figure a failed trial could not give) are left out.
    init(_ samples: [Double]) {
        let sorted = samples.filter(\.isFinite).sorted()
        count = sorted.count
        func rank(_ fraction: Double) -> Double {
            guard !sorted.isEmpty else { return .nan }
            let index = Int((fraction * Double(sorted.count)).rounded(.up)) - 1
            return sorted[Swift.max(0, Swift.min(sorted.count - 1, index))]
        }
        p50 = rank(0.5)
        p99 = rank(0.99)
        max = sorted.last ?? .nan
    }

    var json: [String: Any] { ["samples": count, "p50": p50, "p99": p99, "max": max] }
}

/// Nanoseconds to milliseconds and microseconds.
extension Int64 {
    var milliseconds: Double { Double(self) / 1e6 }
    var microseconds: Double { Double(self) / 1e3 }
}
