/// Minimal JSON writing for the few fixed-shape objects the project emits.
public enum JSONEncoding {
    /// `value` as a JSON string literal, quotes included.
    public static func quoted(_ value: String) -> String {
        var out = "\""
        out.reserveCapacity(value.utf8.count + 2)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
        return out
    }

    /// An optional integer as JSON (`null` when absent).
    public static func number(_ value: Int?) -> String {
        value.map(String.init) ?? "null"
    }

    /// An optional string as JSON (`null` when absent).
    public static func string(_ value: String?) -> String {
        value.map(quoted) ?? "null"
    }
}

extension JSONValue {
    /// Compact JSON text; object keys sorted so the output is stable.
    public var serialized: String {
        switch self {
        case .null: return "null"
        case .bool(let value): return value ? "true" : "false"
        case .int(let value): return String(value)
        case .double(let value): return String(value)
        case .string(let value): return JSONEncoding.quoted(value)
        case .array(let elements): return "[" + elements.map(\.serialized).joined(separator: ", ") + "]"
        case .object(let fields):
            let members = fields.keys.sorted().map { "\(JSONEncoding.quoted($0)): \(fields[$0]!.serialized)" }
            return "{" + members.joined(separator: ", ") + "}"
        }
    }
}
