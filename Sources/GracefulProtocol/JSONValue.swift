/// A parsed JSON value, kept close to what Python's `json` module produces, because the control file's
/// meaning is defined by MindSpore's Python reader: integers stay integers, objects keep the last of
/// duplicate keys, strings keep lone surrogates.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in `Int`.
    case int(Int)
    /// Any other number.
    case double(Double)
    /// A string of Unicode scalars.
    case string(String)
    /// A string holding a lone surrogate escape (`"\udcff"`), which Python keeps and a Swift `String`
    /// cannot hold: its UTF-16 code units. Paths use them for bytes that are not UTF-8.
    case illFormedString([UInt16])
    case array([JSONValue])
    case object([String: JSONValue])

    /// Whether Python would find `value == 1` true: 1, 1.0 and true do; "1", null, lists do not.
    public var equalsOneLikePython: Bool {
        switch self {
        case .bool(let value): return value
        case .int(let value): return value == 1
        case .double(let value): return value == 1
        case .null, .string, .illFormedString, .array, .object: return false
        }
    }

    /// The value when it is a number written as an integer (no fraction, no exponent).
    public var intValue: Int? {
        if case .int(let value) = self { return value }
        return nil
    }

    /// The text of a well-formed string.
    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var isNull: Bool { self == .null }

    public subscript(key: String) -> JSONValue? {
        if case .object(let fields) = self { return fields[key] }
        return nil
    }
}
