/// A checkpoint's path exactly as the rank's file system knows it: bytes, which need not be UTF-8.
///
/// On the wire and in the commit record it is a JSON string in which every byte that is not part of
/// valid UTF-8 is the lone surrogate U+DC80 to U+DCFF (Python's `surrogateescape`, PEP 383), so
/// `json.dumps(os.fsdecode(path))` is a valid encoding (docs/PROTOCOL.md, "Paths").
public struct CheckpointPath: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// Never empty, never containing NUL: the bytes a system call can take.
    public let bytes: [UInt8]

    /// Nil when `bytes` is empty or contains NUL: no file has such a name.
    public init?(bytes: some Collection<UInt8>) {
        guard !bytes.isEmpty, !bytes.contains(0) else { return nil }
        self.bytes = Array(bytes)
    }

    /// The UTF-8 bytes of `text`; nil when empty or containing NUL.
    public init?(_ text: String) {
        self.init(bytes: text.utf8)
    }

    /// For literals in code; an empty literal or one with NUL is a programming error.
    public init(stringLiteral value: String) {
        guard let path = CheckpointPath(value) else { preconditionFailure("not a path: \(value.debugDescription)") }
        self = path
    }

    /// Decodes a JSON string value: lone surrogates U+DC80 to U+DCFF become the bytes 0x80 to 0xFF.
    /// Nil for anything else (another type, another lone surrogate, an empty string, NUL).
    public init?(json value: JSONValue) {
        switch value {
        case .string(let text):
            self.init(text)
        case .illFormedString(let units):
            var bytes: [UInt8] = []
            var index = 0
            while index < units.count {
                let unit = units[index]
                if UTF16.isLeadSurrogate(unit), index + 1 < units.count, UTF16.isTrailSurrogate(units[index + 1]) {
                    let scalar = Unicode.Scalar(0x10000 + ((UInt32(unit) - 0xD800) << 10) + (UInt32(units[index + 1]) - 0xDC00))!
                    bytes += UTF8.encode(scalar)!
                    index += 2
                    continue
                }
                if (0xDC80...0xDCFF).contains(unit) {
                    bytes.append(UInt8(unit - 0xDC00))
                } else if let scalar = Unicode.Scalar(unit) {
                    bytes += UTF8.encode(scalar)!
                } else {
                    return nil
                }
                index += 1
            }
            self.init(bytes: bytes)
        default:
            return nil
        }
    }

    /// The JSON string literal, quotes included: valid UTF-8 as text, every other byte as `\udcXX`.
    public var json: String {
        var out = "\""
        forEachPart { part in
            switch part {
            case .scalar(let scalar): JSONEncoding.appendEscaped(scalar, to: &out)
            case .undecodable(let byte): out += "\\udc" + String(byte, radix: 16)
            }
        }
        return out + "\""
    }

    /// For people: valid UTF-8 as text, every other byte, and control characters, as `\xNN`, so an
    /// undecodable name is visible rather than replaced.
    public var description: String {
        var out = ""
        forEachPart { part in
            switch part {
            case .scalar(let scalar) where scalar.value < 0x20 || scalar.value == 0x7F || scalar == "\\":
                out += Self.hex(UInt8(scalar.value))
            case .scalar(let scalar):
                out.unicodeScalars.append(scalar)
            case .undecodable(let byte):
                out += Self.hex(byte)
            }
        }
        return out
    }

    private enum Part {
        case scalar(Unicode.Scalar)
        /// A byte that is not part of valid UTF-8.
        case undecodable(UInt8)
    }

    /// The bytes in order, as decoded scalars and the bytes that decode to none.
    private func forEachPart(_ body: (Part) -> Void) {
        var parser = Unicode.UTF8.ForwardParser()
        var iterator = bytes.makeIterator()
        var offset = 0
        while true {
            switch parser.parseScalar(from: &iterator) {
            case .valid(let encoded):
                body(.scalar(Unicode.UTF8.decode(encoded)))
                offset += encoded.count
            case .error(let length):
                bytes[offset..<(offset + length)].forEach { body(.undecodable($0)) }
                offset += length
            case .emptyInput:
                return
            }
        }
    }

    private static func hex(_ byte: UInt8) -> String {
        let digits = String(byte, radix: 16)
        return "\\x" + (digits.count == 1 ? "0" : "") + digits
    }

    /// Calls `body` with the path NUL-terminated, for system calls.
    public func withCString<Result>(_ body: (UnsafePointer<CChar>) throws -> Result) rethrows -> Result {
        try (bytes + [0]).withUnsafeBufferPointer { buffer in
            try buffer.withMemoryRebound(to: CChar.self) { try body($0.baseAddress!) }
        }
    }
}
