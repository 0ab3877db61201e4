/// Minimal JSON writing for the few fixed-shape objects the project emits.
public enum JSONEncoding {
    /// `value` as a JSON string literal, quotes included.
    public static func quoted(_ value: String) -> String {
        var out = "\""
        out.reserveCapacity(value.utf8.count + 2)
        for scalar in value.unicodeScalars { appendEscaped(scalar, to: &out) }
        out += "\""
        return out
    }

    /// Appends `scalar` as it appears inside a JSON string literal.
    static func appendEscaped(_ scalar: Unicode.Scalar, to out: inout String) {
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

    /// An optional integer as JSON (`null` when absent).
    public static func number(_ value: Int?) -> String {
        value.map(String.init) ?? "null"
    }

    /// An optional string as JSON (`null` when absent).
    public static func string(_ value: String?) -> String {
        value.map(quoted) ?? "null"
    }

    /// An optional path as JSON (`null` when absent); see `CheckpointPath.json`.
    public static func path(_ value: CheckpointPath?) -> String {
        value?.json ?? "null"
    }
}
