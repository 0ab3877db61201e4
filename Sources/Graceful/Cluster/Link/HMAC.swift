/// HMAC-SHA-256 (RFC 2104, tested against RFC 4231).
public enum HMACSHA256 {
    public static let length = SHA256.digestLength

    public static func authenticationCode(key: [UInt8], message: some Collection<UInt8>) -> [UInt8] {
        // A key longer than a block is hashed first; a shorter one is padded with zeros.
        let key = key.count > SHA256.blockLength ? SHA256.hash(key) : key
        var inner = SHA256()
        var outer = SHA256()
        withUnsafeTemporaryAllocation(byteCount: SHA256.blockLength, alignment: 1) { pad in
            pad.initializeMemory(as: UInt8.self, repeating: 0)
            pad.copyBytes(from: key)
            for index in pad.indices { pad[index] ^= 0x36 }
            inner.update(UnsafeRawBufferPointer(pad))
            // Turns each byte from key ^ 0x36 into key ^ 0x5c.
            for index in pad.indices { pad[index] ^= 0x36 ^ 0x5c }
            outer.update(UnsafeRawBufferPointer(pad))
        }
        inner.update(message)
        outer.update(inner.finalize())
        return outer.finalize()
    }

    /// Whether two codes are the same, in a time that does not depend on where they differ (for codes
    /// of equal length), so that a forger learns nothing from how long a rejection takes.
    public static func isEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}
