import Testing

@testable import Graceful

@Suite struct SecureRandomTests {
    @Test func givesTheCountAskedForPastOneKernelCall() {
        #expect(SecureRandom.bytes(0) == [])
        #expect(SecureRandom.bytes(32).count == 32)
        let long = SecureRandom.bytes(1000)
        #expect(long.count == 1000)
        // The last chunk was filled too: 200 zero bytes from a working generator are out of the question.
        #expect(long.suffix(200).contains { $0 != 0 })
        #expect(SecureRandom.bytes(32) != SecureRandom.bytes(32))
    }
}
