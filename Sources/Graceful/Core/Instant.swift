/// A point on a monotonic clock, in nanoseconds. The coordinator's decisions take it as an input so
/// tests can drive them with a fake clock.
public struct Instant: Comparable, Hashable, Sendable, CustomStringConvertible {
    public var nanoseconds: Int64

    public init(nanoseconds: Int64) {
        self.nanoseconds = nanoseconds
    }

    public static func seconds(_ seconds: Double) -> Instant {
        Instant(nanoseconds: Int64(seconds * 1e9))
    }

    public static func < (lhs: Instant, rhs: Instant) -> Bool { lhs.nanoseconds < rhs.nanoseconds }

    public static func + (lhs: Instant, seconds: Double) -> Instant {
        Instant(nanoseconds: lhs.nanoseconds &+ Int64(seconds * 1e9))
    }

    /// Seconds from `earlier` to `self`.
    public func seconds(since earlier: Instant) -> Double {
        Double(nanoseconds - earlier.nanoseconds) / 1e9
    }

    public var description: String { "\(Double(nanoseconds) / 1e9)s" }
}
