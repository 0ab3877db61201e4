/// SHA-256 (FIPS 180-4), streaming: `update` any number of times with any split of the input, then
/// `finalize`.
///
/// Hashing allocates nothing but the digest: the partial block is held inline and the message
/// schedule lives on the stack, so authenticating a small frame stays within a few microseconds.
public struct SHA256: Sendable {
    public static let digestLength = 32
    public static let blockLength = 64

    /// Eight 64-bit words: one block held inline, without an array's allocation.
    private typealias Block = (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)

    private var state: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32) = (
        0x6a09_e667, 0xbb67_ae85, 0x3c6e_f372, 0xa54f_f53a, 0x510e_527f, 0x9b05_688c, 0x1f83_d9ab, 0x5be0_cd19
    )
    /// The bytes of an incomplete block, waiting for the rest of it: `length % 64` of them.
    private var pending: Block = (0, 0, 0, 0, 0, 0, 0, 0)
    /// Bytes hashed so far.
    private var length: UInt64 = 0

    public init() {}

    public static func hash<Bytes: Collection>(_ bytes: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var hasher = SHA256()
        hasher.update(bytes)
        return hasher.finalize()
    }

    public mutating func update<Bytes: Collection>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        let contiguous: Void? = bytes.withContiguousStorageIfAvailable { update(UnsafeRawBufferPointer($0)) }
        guard contiguous == nil else { return }
        // A collection without contiguous storage (a lazy view, a chain) goes through a block at a time.
        withUnsafeTemporaryAllocation(byteCount: Self.blockLength, alignment: 1) { chunk in
            var iterator = bytes.makeIterator()
            var count = 0
            while let byte = iterator.next() {
                chunk[count] = byte
                count += 1
                if count == chunk.count {
                    update(UnsafeRawBufferPointer(chunk))
                    count = 0
                }
            }
            update(UnsafeRawBufferPointer(rebasing: chunk[..<count]))
        }
    }

    public consuming func finalize() -> [UInt8] {
        let bitLength = length &* 8
        let used = Int(length % UInt64(Self.blockLength))
        // 0x80, then zeros up to 8 bytes short of a block boundary, then the length in bits.
        let padding = (used < 56 ? 56 - used : 120 - used) + 8
        withUnsafeTemporaryAllocation(byteCount: padding, alignment: 1) { tail in
            tail.initializeMemory(as: UInt8.self, repeating: 0)
            tail[0] = 0x80
            tail.storeBytes(of: bitLength.bigEndian, toByteOffset: padding - 8, as: UInt64.self)
            update(UnsafeRawBufferPointer(tail))
        }
        let digest = (
            state.0.bigEndian, state.1.bigEndian, state.2.bigEndian, state.3.bigEndian,
            state.4.bigEndian, state.5.bigEndian, state.6.bigEndian, state.7.bigEndian
        )
        return withUnsafeBytes(of: digest) { Array($0) }
    }

    private mutating func update(_ input: UnsafeRawBufferPointer) {
        guard !input.isEmpty else { return }
        var input = input
        let used = Int(length % UInt64(Self.blockLength))
        length &+= UInt64(input.count)
        if used > 0 {
            let taken = min(Self.blockLength - used, input.count)
            withUnsafeMutableBytes(of: &pending) { block in
                block.baseAddress!.advanced(by: used).copyMemory(from: input.baseAddress!, byteCount: taken)
            }
            input = UnsafeRawBufferPointer(rebasing: input[taken...])
            guard used + taken == Self.blockLength else { return }
            let block = pending
            withUnsafeBytes(of: block) { compress($0) }
        }
        let whole = input.count - input.count % Self.blockLength
        if whole > 0 { compress(UnsafeRawBufferPointer(rebasing: input[..<whole])) }
        if whole < input.count {
            withUnsafeMutableBytes(of: &pending) { block in
                block.baseAddress!.copyMemory(from: input.baseAddress! + whole, byteCount: input.count - whole)
            }
        }
    }

    /// Runs the compression function over whole blocks.
    private mutating func compress(_ blocks: UnsafeRawBufferPointer) {
        withUnsafeTemporaryAllocation(of: UInt32.self, capacity: 64) { schedule in
            Self.roundConstants.withUnsafeBufferPointer { constants in
                var offset = 0
                while offset < blocks.count {
                    for t in 0..<16 {
                        let word = blocks.loadUnaligned(fromByteOffset: offset + 4 * t, as: UInt32.self)
                        schedule[t] = UInt32(bigEndian: word)
                    }
                    for t in 16..<64 {
                        let w15 = schedule[t - 15]
                        let w2 = schedule[t - 2]
                        let s0 = rotate(w15, 7) ^ rotate(w15, 18) ^ (w15 &>> 3)
                        let s1 = rotate(w2, 17) ^ rotate(w2, 19) ^ (w2 &>> 10)
                        schedule[t] = schedule[t - 16] &+ s0 &+ schedule[t - 7] &+ s1
                    }
                    var (a, b, c, d, e, f, g, h) = state
                    for t in 0..<64 {
                        let sum1 = rotate(e, 6) ^ rotate(e, 11) ^ rotate(e, 25)
                        let choice = (e & f) ^ (~e & g)
                        let t1 = h &+ sum1 &+ choice &+ constants[t] &+ schedule[t]
                        let sum0 = rotate(a, 2) ^ rotate(a, 13) ^ rotate(a, 22)
                        let majority = (a & b) ^ (a & c) ^ (b & c)
                        h = g
                        g = f
                        f = e
                        e = d &+ t1
                        d = c
                        c = b
                        b = a
                        a = t1 &+ sum0 &+ majority
                    }
                    state = (
                        state.0 &+ a, state.1 &+ b, state.2 &+ c, state.3 &+ d,
                        state.4 &+ e, state.5 &+ f, state.6 &+ g, state.7 &+ h
                    )
                    offset += Self.blockLength
                }
            }
        }
    }

    private static let roundConstants: [UInt32] = [
        0x428a_2f98, 0x7137_4491, 0xb5c0_fbcf, 0xe9b5_dba5, 0x3956_c25b, 0x59f1_11f1, 0x923f_82a4, 0xab1c_5ed5,
        0xd807_aa98, 0x1283_5b01, 0x2431_85be, 0x550c_7dc3, 0x72be_5d74, 0x80de_b1fe, 0x9bdc_06a7, 0xc19b_f174,
        0xe49b_69c1, 0xefbe_4786, 0x0fc1_9dc6, 0x240c_a1cc, 0x2de9_2c6f, 0x4a74_84aa, 0x5cb0_a9dc, 0x76f9_88da,
        0x983e_5152, 0xa831_c66d, 0xb003_27c8, 0xbf59_7fc7, 0xc6e0_0bf3, 0xd5a7_9147, 0x06ca_6351, 0x1429_2967,
        0x27b7_0a85, 0x2e1b_2138, 0x4d2c_6dfc, 0x5338_0d13, 0x650a_7354, 0x766a_0abb, 0x81c2_c92e, 0x9272_2c85,
        0xa2bf_e8a1, 0xa81a_664b, 0xc24b_8b70, 0xc76c_51a3, 0xd192_e819, 0xd699_0624, 0xf40e_3585, 0x106a_a070,
        0x19a4_c116, 0x1e37_6c08, 0x2748_774c, 0x34b0_bcb5, 0x391c_0cb3, 0x4ed8_aa4a, 0x5b9c_ca4f, 0x682e_6ff3,
        0x748f_82ee, 0x78a5_636f, 0x84c8_7814, 0x8cc7_0208, 0x90be_fffa, 0xa450_6ceb, 0xbef9_a3f7, 0xc671_78f2,
    ]
}

@inline(__always)
private func rotate(_ word: UInt32, _ count: UInt32) -> UInt32 {
    (word &>> count) | (word &<< (32 - count))
}
