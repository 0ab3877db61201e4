import Foundation
@testable import Graceful
import Testing

/// Slurm host lists expanded as `scontrol show hostnames` expands them. The expectations are
/// scontrol's own answers (Slurm 22.05.8); where scontrol is installed a test also asks it directly,
/// for the tricky lists here and for seeded random ones.
struct SlurmHostListTests {
    static let agreed: [(String, [String])] = [
        ("n1", ["n1"]),
        ("n[01-03,7]", ["n01", "n02", "n03", "n7"]),
        ("gpu-[9-11]", ["gpu-9", "gpu-10", "gpu-11"]),
        ("n[09-10]", ["n09", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        // The width is the lower bound's: a padded upper bound does not pad.
        ("n[1-03]", ["n1", "n2", "n3"]),
        ("n[01-3]", ["n01", "n02", "n03"]),
        ("n[00]", ["n00"]),
        ("x[0-0]", ["x0"]),
        ("n007", ["n007"]),
        ("[1-2]", ["1", "2"]),
        ("a.b-c_d[1-2]", ["a.b-c_d1", "a.b-c_d2"]),
        // Several brackets: the last runs fastest; with three, the middle one slowest.
        ("a[1-2]b[3-4]", ["a1b3", "a1b4", "a2b3", "a2b4"]),
        ("n[1-2][3-4]", ["n13", "n14", "n23", "n24"]),
        ("a[1,3]b[5-6]", ["a1b5", "a1b6", "a3b5", "a3b6"]),
        ("a[1-2]b[3-4]c[5-6]", ["a1b3c5", "a1b3c6", "a2b3c5", "a2b3c6", "a1b4c5", "a1b4c6", "a2b4c5", "a2b4c6"]),
        // Duplicates stay, in order; empty entries are skipped; spaces and tabs separate too.
        ("n1,n1", ["n1", "n1"]),
        ("n[1-3],n2", ["n1", "n2", "n3", "n2"]),
        ("n[1,1]", ["n1", "n1"]),
        ("n[1-2],n[01-02]", ["n1", "n2", "n01", "n02"]),
        ("n[1,2,3-4,02]", ["n1", "n2", "n3", "n4", "n02"]),
        ("a,,b", ["a", "b"]),
        (",a,", ["a"]),
        ("n[1-2] m[3-4]", ["n1", "n2", "m3", "m4"]),
        ("n\tm", ["n", "m"]),
        ("a[1-2]b[3-4],c", ["a1b3", "a1b4", "a2b3", "a2b4", "c"]),
        ("n[8-9],n010", ["n8", "n9", "n010"]),
    ]

    /// scontrol prints "Invalid hostlist" for these.
    static let rejectedByBoth = [
        "n[3-1]", "n[]", "n[a-c]", "n[1x]", "n[-1]", "n[1--2]", "n[1-2-3]", "n[1,]", "n[,1]",
        "n[1-2]x", "a[1-2]-b[3-4]c", "x[1-2]y[1-2]z", "a.b[1-2].c", "n[1-2]]", "n[1]]", "n[[1-2]]",
        "a[]b[1]", "n[0-65536]", "a[0-100000]b[0-1]",
    ]

    /// scontrol reads something into these (`n[1-3` gives "n]", `n[ 1-2]` gives n01 n02, `n[1-]` gives
    /// n1, a 23-digit number becomes 18446744073709551615; with three brackets or more, a bad range
    /// in one before the last two drops the entry without a word: `a,n[3-1]x[1]y[1-2],b` gives a b);
    /// graceful refuses them instead.
    static let rejectedByGracefulOnly = [
        "", ",", " ", "n[1-3", "n1-3]", "n]", "n[", "[", "]", "n[[1]", "n[ 1-2]", "n[1 - 2]", "n[+1-2]",
        "n[1-+2]", "n[1-]", "n99999999999999999999999", "n[99999999999999999999999]", "a,n[3-1]x[1]y[1-2],b",
    ]

    @Test func expandsAsScontrol() throws {
        for (list, hosts) in Self.agreed {
            #expect(try SlurmHostList.expand(list) == hosts, "\(list)")
        }
    }

    @Test func rejectsMalformedListsInOneLine() {
        for list in Self.rejectedByBoth + Self.rejectedByGracefulOnly {
            #expect(throws: SlurmHostList.Error.self, "\(list.debugDescription)") { try SlurmHostList.expand(list) }
            do {
                _ = try SlurmHostList.expand(list)
            } catch {
                #expect(!error.description.contains("\n") && error.description.count < 200, "\(error.description)")
            }
        }
    }

    /// A hostile SLURM_JOB_NODELIST cannot make graceful allocate more than 65,536 names, whatever
    /// the brackets multiply to, and is refused at once.
    @Test func boundsTheExpansion() throws {
        #expect(try SlurmHostList.expand("n[0-65535]").count == 65_536)
        #expect(try SlurmHostList.expand("n[0-65535]").last == "n65535")
        for list in ["n[0-65535],m1", "a[0-300]b[0-300]", "a[0-65535]b[0-1]", "n[0-18446744073709551615]",
                     "a[0-65535]b[0-65535]c[0-65535]d[0-65535]", String(repeating: "n[0-65535],", count: 2)] {
            let start = Date()
            #expect(throws: SlurmHostList.Error.self, "\(list)") { try SlurmHostList.expand(list) }
            #expect(Date().timeIntervalSince(start) < 1, "\(list)")
        }
    }

    @Test func quotesTheListInItsError() {
        #expect(throws: SlurmHostList.Error(description: "range '3-1' in 'n[3-1]' goes down")) { try SlurmHostList.expand("n[3-1]") }
        #expect(throws: SlurmHostList.Error(description: "unclosed '[' in host list 'n[1-3'")) { try SlurmHostList.expand("n[1-3") }
        let long = String(repeating: "x", count: 500) + "\n["
        do {
            _ = try SlurmHostList.expand(long)
            Issue.record("accepted")
        } catch {
            #expect(error.description.count < 140 && !error.description.contains("\n"), "\(error.description)")
        }
    }

    // MARK: - scontrol as the oracle

    static let scontrol = SlurmCluster.executable("scontrol")

    @Test(.enabled(if: scontrol != nil, "scontrol is not installed (Debian: apt-get install slurm-client; .ci/slurm/cluster.sh installs it)"))
    func agreesWithScontrol() throws {
        let oracle = try Oracle(note: "")
        for (list, _) in Self.agreed {
            try oracle.check(list, valid: true)
        }
        for list in Self.rejectedByBoth {
            #expect(try oracle.expand(list) == nil, "scontrol accepts \(list)")
        }
    }

    /// `GRACEFUL_PROPERTY_SEED` replays a run (the seed a failure prints).
    @Test(.enabled(if: scontrol != nil, "scontrol is not installed (Debian: apt-get install slurm-client; .ci/slurm/cluster.sh installs it)"))
    func agreesWithScontrolOnRandomLists() throws {
        let replay = ProcessInfo.processInfo.environment["GRACEFUL_PROPERTY_SEED"].flatMap(UInt64.init)
        let seed = replay ?? UInt64.random(in: 0...UInt64.max)
        var random = SeededGenerator(seed: seed)
        let oracle = try Oracle(note: "\nreplay with GRACEFUL_PROPERTY_SEED=\(seed)")
        for _ in 0..<150 {
            try oracle.check(Self.randomList(&random), valid: true)
        }
        for _ in 0..<100 {
            try oracle.check(Self.mutated(Self.randomList(&random), &random), valid: false)
        }
    }

    /// A valid list: one to three entries, each a plain name or a name with one to three brackets
    /// of numbers and ranges, zero-padded or not.
    static func randomList(_ random: inout SeededGenerator) -> String {
        let entries = (0..<Int.random(in: 1...3, using: &random)).map { _ -> String in
            let prefix = random.pick(["n", "gpu-", "node", "r", "a.b", "x_", ""])
            if random.chance(0.25) { return prefix + (prefix.isEmpty ? "h" : "") + randomNumber(&random) }
            let brackets = random.chance(0.7) ? 1 : Int.random(in: 2...3, using: &random)
            return (0..<brackets).map { index in
                (index == 0 ? prefix : random.pick(["", "-", "b", "c."])) + "[" + randomBracket(&random) + "]"
            }.joined()
        }
        return entries.joined(separator: random.chance(0.9) ? "," : " ")
    }

    static func randomBracket(_ random: inout SeededGenerator) -> String {
        (0..<Int.random(in: 1...3, using: &random)).map { _ in
            let low = randomNumber(&random)
            guard random.chance(0.6) else { return low }
            let width = random.chance(0.3) ? Int.random(in: 1...4, using: &random) : 0
            let high = String(Int(low)! + Int.random(in: 0...12, using: &random))
            return low + "-" + String(repeating: "0", count: max(0, width - high.count)) + high
        }.joined(separator: ",")
    }

    static func randomNumber(_ random: inout SeededGenerator) -> String {
        let value = random.pick([Int.random(in: 0...12, using: &random), Int.random(in: 0...120, using: &random), Int.random(in: 95...105, using: &random)])
        let width = random.chance(0.4) ? Int.random(in: 1...4, using: &random) : 0
        let digits = String(value)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }

    /// The list with one character inserted, removed or replaced by a bracket, separator or sign.
    static func mutated(_ list: String, _ random: inout SeededGenerator) -> String {
        var characters = Array(list)
        let position = Int.random(in: 0...characters.count, using: &random)
        let character = random.pick(Array("[]-,0 x"))
        switch Int.random(in: 0..<3, using: &random) {
        case 0: characters.insert(character, at: position)
        case 1 where position < characters.count: characters.remove(at: position)
        default: if position < characters.count { characters[position] = character }
        }
        return String(characters)
    }

    /// `scontrol show hostnames`, with a minimal configuration of its own: scontrol reads one
    /// before anything (and retries for 60 s when it finds none). It exits 0 for a list it rejects;
    /// "Invalid hostlist" on stderr says so.
    final class Oracle {
        let directory: TemporaryDirectory
        /// Appended to every failure (how to replay it).
        let note: String

        init(note: String) throws {
            directory = try TemporaryDirectory()
            self.note = note
            try directory.write("slurm.conf", "ClusterName=oracle\nSlurmctldHost=localhost\n")
        }

        /// scontrol's hosts, or nil when it rejects the list.
        func expand(_ list: String) throws -> [String]? {
            let run = try Launched([SlurmHostListTests.scontrol!, "show", "hostnames", "--", list], in: directory.path,
                                   environment: ["SLURM_CONF": directory.file("slurm.conf")])
            let status = try run.waitForExit(timeout: 30)
            guard status == 0, !run.stderr.contains("Invalid hostlist") else { return nil }
            return run.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        }

        /// What graceful accepts, scontrol expands the same; what scontrol rejects, graceful rejects.
        /// A `valid` list graceful must accept too; others it may refuse where scontrol reads
        /// nonsense into them (`rejectedByGracefulOnly`).
        func check(_ list: String, valid: Bool) throws {
            let expected = try expand(list)
            do {
                let actual = try SlurmHostList.expand(list)
                #expect(actual == expected, "\(list.debugDescription): graceful \(actual), scontrol \(String(describing: expected))\(note)")
            } catch {
                #expect(!valid || expected == nil, "\(list.debugDescription): graceful refuses it (\(error)), scontrol gives \(expected ?? [])\(note)")
            }
        }
    }
}
