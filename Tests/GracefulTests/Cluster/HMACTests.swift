import Testing

@testable import Graceful

/// HMAC-SHA-256 against the seven test cases of RFC 4231, byte for byte.
@Suite struct HMACTests {
    @Test(arguments: [
        (
            String(repeating: "0b", count: 20), Array("Hi There".utf8).hex,
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        ),
        (
            Array("Jefe".utf8).hex, Array("what do ya want for nothing?".utf8).hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        ),
        (
            String(repeating: "aa", count: 20), String(repeating: "dd", count: 50),
            "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"
        ),
        (
            "0102030405060708090a0b0c0d0e0f10111213141516171819", String(repeating: "cd", count: 50),
            "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"
        ),
        // Test case 5 specifies only the first 128 bits.
        (
            String(repeating: "0c", count: 20), Array("Test With Truncation".utf8).hex,
            "a3b6167473100ee06e0c796c2955552b"
        ),
        (
            String(repeating: "aa", count: 131),
            Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8).hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        ),
        (
            String(repeating: "aa", count: 131),
            Array(
                "This is a test using a larger than block-size key and a larger than block-size data. The key needs to be hashed before being used by the HMAC algorithm."
                    .utf8
            ).hex,
            "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"
        ),
    ])
    func rfc4231(key: String, data: String, code: String) {
        let computed = HMACSHA256.authenticationCode(key: [UInt8](hex: key), message: [UInt8](hex: data))
        #expect(computed.count == 32)
        #expect(computed.prefix(code.count / 2) == [UInt8](hex: code)[...])
    }

    @Test func isEqualComparesEveryByteAndTheLength() {
        let code = HMACSHA256.authenticationCode(key: [1], message: [2])
        #expect(HMACSHA256.isEqual(code, code))
        for index in code.indices {
            var altered = code
            altered[index] ^= 0x80
            #expect(!HMACSHA256.isEqual(code, altered))
        }
        #expect(!HMACSHA256.isEqual(code, Array(code.dropLast())))
        #expect(!HMACSHA256.isEqual([], code))
        #expect(HMACSHA256.isEqual([], []))
    }
}
