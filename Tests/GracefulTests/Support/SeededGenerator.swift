import Foundation

/// SplitMix64: a deterministic generator, so a failing randomized test replays from its printed seed.
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func chance(_ probability: Double) -> Bool {
        Double.random(in: 0..<1, using: &self) < probability
    }

    mutating func pick<T>(_ choices: [T]) -> T {
        choices[Int.random(in: 0..<choices.count, using: &self)]
    }
}

/// The seeds of a randomized test's runs: `GRACEFUL_PROPERTY_RUNS` of them (else `defaultRuns`),
/// from a random start (or `start`, for a fixed sequence); `GRACEFUL_PROPERTY_SEED` replays that one
/// run alone (the seed a failure prints).
func propertySeeds(defaultRuns: Int, start: UInt64? = nil) -> [UInt64] {
    let environment = ProcessInfo.processInfo.environment
    if let replay = environment["GRACEFUL_PROPERTY_SEED"].flatMap(UInt64.init) { return [replay] }
    let runs = environment["GRACEFUL_PROPERTY_RUNS"].flatMap(Int.init) ?? defaultRuns
    var seeds = SeededGenerator(seed: start ?? UInt64.random(in: 0...UInt64.max))
    return (0..<runs).map { _ in seeds.next() }
}
