/// A parsed JSON value, kept close to what Python's `json` module produces, because the control file's
/// meaning is defined by MindSpore's Python reader: integers stay integers, objects keep the last of
/// duplicate keys.
public enum JSONValue: Equatable, Sendable {
    case null
    case bool(Bool)
    /// A number written without fraction or exponent that fits in `Int`.
    case int(Int)
    /// Any other number.
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    /// Whether Python would find `value == 1` true: 1, 1.0 and true do; "1", null, lists do not.
    public var equalsOneLikePython: Bool {
        switch self {
        case .bool(let value): return value
        case .int(let value): return value == 1
        case .double(let value): return value == 1
        case .null, .string, .array, .object: return false
        }
    }

    /// The value as an `Int` when it is an integer, or a double holding an exact integer.
    public var intValue: Int? {
        switch self {
        case .int(let value): return value
        case .double(let value):
            return Int(exactly: value)
        default: return nil
        }
    }

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
