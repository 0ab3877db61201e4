import GracefulProtocol

/// Any parsed JSON value written back as compact JSON, object keys sorted, so that equal values
/// always give equal text (the queue compares definitions by their files).
enum JSONWriting {
    static func encode(_ value: JSONValue) -> String {
        switch value {
        case .null: return "null"
        case .bool(let flag): return flag ? "true" : "false"
        case .int(let number): return String(number)
        // Swift's shortest representation reads back to the same Double; the parser never yields
        // infinities or NaN.
        case .double(let number): return "\(number)"
        case .string(let text): return JSONEncoding.quoted(text)
        case .illFormedString(let units):
            return "\"" + units.map { unit in
                let hex = String(unit, radix: 16)
                return "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            }.joined() + "\""
        case .array(let values): return "[" + values.map(encode).joined(separator: ", ") + "]"
        case .object(let fields):
            return "{" + fields.keys.sorted().map { JSONEncoding.quoted($0) + ": " + encode(fields[$0]!) }.joined(separator: ", ") + "}"
        }
    }
}
