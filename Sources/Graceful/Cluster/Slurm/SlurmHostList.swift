/// Slurm's compressed host lists (`SLURM_JOB_NODELIST=gpu-[01-03,7],login1`) expanded into host
/// names exactly as `scontrol show hostnames` expands them (Slurm 22.05, checked against it): in
/// order, duplicates kept, entries separated by commas, spaces or tabs, empty entries skipped.
///
/// A bracket holds numbers and ranges (`01-03,7`); a number keeps the width of its range's lower
/// bound, zeros included (`[08-10]` gives 08 09 10, `[8-10]` gives 8 9 10). A name may hold several
/// brackets, text between them, nothing after the last (`r[1-2]n[1-3]`); Slurm varies the last
/// bracket fastest, then, for three or more, the one before it slowest: `a[1-2]b[3-4]c[5-6]` gives
/// a1b3c5 a1b3c6 a2b3c5 a2b3c6 a1b4c5 ...
///
/// Stricter than Slurm where Slurm reads nonsense: an unbalanced or nested bracket, a space or sign
/// inside one, a range without its upper bound (`n[1-]`), a number beyond 64 bits, a bad range in
/// any bracket (with three brackets or more Slurm silently drops such an entry), or no host at all
/// is an error, never a guess.
enum SlurmHostList {
    /// Beyond this many hosts the variable is taken as broken or hostile, not as a cluster: it bounds
    /// the memory an expansion takes. Slurm refuses a single range of more (its MAX_RANGE).
    static let maximumHosts = 65_536

    struct Error: Swift.Error, Equatable, CustomStringConvertible, Sendable {
        let description: String
    }

    /// One bracket's numbers: each range's bounds and its zero-padded width.
    private struct Range {
        var low: UInt64
        var high: UInt64
        var width: Int
    }

    static func expand(_ list: String) throws(Error) -> [String] {
        var hosts: [String] = []
        for entry in try entries(of: list) {
            try expandEntry(entry, into: &hosts)
        }
        guard !hosts.isEmpty else { throw Error(description: "empty host list \(quoted(list))") }
        return hosts
    }

    /// The entries of `list`: split at commas, spaces and tabs outside brackets.
    private static func entries(of list: String) throws(Error) -> [Substring] {
        var entries: [Substring] = []
        var start = list.startIndex
        var depth = 0
        for index in list.indices {
            switch list[index] {
            case "[":
                guard depth == 0 else { throw Error(description: "nested '[' in host list \(quoted(list))") }
                depth = 1
            case "]":
                guard depth == 1 else { throw Error(description: "unbalanced ']' in host list \(quoted(list))") }
                depth = 0
            case ",", " ", "\t":
                guard depth == 0 else { break }
                if start < index { entries.append(list[start..<index]) }
                start = list.index(after: index)
            default:
                break
            }
        }
        guard depth == 0 else { throw Error(description: "unclosed '[' in host list \(quoted(list))") }
        if start < list.endIndex { entries.append(list[start...]) }
        return entries
    }

    /// Appends the hosts of one entry (brackets balanced, none nested), in Slurm's order.
    private static func expandEntry(_ entry: Substring, into hosts: inout [String]) throws(Error) {
        var texts: [Substring] = []
        var brackets: [[Range]] = []
        var rest = entry
        while let open = rest.firstIndex(of: "[") {
            let close = rest[open...].firstIndex(of: "]")!
            texts.append(rest[..<open])
            brackets.append(try ranges(rest[rest.index(after: open)..<close], in: entry))
            rest = rest[rest.index(after: close)...]
        }
        guard !brackets.isEmpty else {
            try reserve(1, in: hosts)
            hosts.append(try plainHost(entry))
            return
        }
        guard rest.isEmpty else {
            throw Error(description: "text after the last bracket of \(quoted(String(entry))) (Slurm rejects it)")
        }
        var count = 1
        for ranges in brackets {
            let (product, overflow) = count.multipliedReportingOverflow(by: size(of: ranges))
            guard !overflow, product <= maximumHosts else { throw tooMany(entry) }
            count = product
        }
        try reserve(count, in: hosts)
        let expanded = brackets.map(numbers)
        // The last bracket runs fastest; before it, Slurm's recursion runs the bracket just before
        // the last slowest and the first one fastest.
        let last = brackets.count - 1
        let outerOrder = Array((0..<last).reversed())
        var choice = Array(repeating: "", count: last)
        func walk(_ level: Int) {
            guard level < outerOrder.count else {
                let prefix = (0..<last).map { texts[$0] + choice[$0] }.joined() + texts[last]
                for number in expanded[last] { hosts.append(prefix + number) }
                return
            }
            let bracket = outerOrder[level]
            for number in expanded[bracket] {
                choice[bracket] = number
                walk(level + 1)
            }
        }
        walk(0)
    }

    /// A name without brackets, as it is (Slurm would rewrite only a numeric suffix past 64 bits).
    private static func plainHost(_ entry: Substring) throws(Error) -> String {
        let digits = entry.reversed().prefix { $0.isASCII && $0.isNumber }.count
        guard digits == 0 || UInt64(entry.suffix(digits)) != nil else {
            throw Error(description: "number too large in host \(quoted(String(entry)))")
        }
        return String(entry)
    }

    /// The ranges of one bracket's contents, e.g. `01-03,7`.
    private static func ranges(_ contents: Substring, in entry: Substring) throws(Error) -> [Range] {
        var ranges: [Range] = []
        for item in contents.split(separator: ",", omittingEmptySubsequences: false) {
            let bounds = item.split(separator: "-", omittingEmptySubsequences: false)
            guard bounds.count <= 2, bounds.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }) else {
                throw Error(description: "bad range \(quoted(String(item))) in \(quoted(String(entry))) (digits or digits-digits)")
            }
            guard let low = UInt64(bounds[0]), let high = UInt64(bounds[bounds.count - 1]) else {
                throw Error(description: "number too large in \(quoted(String(entry)))")
            }
            guard low <= high else {
                throw Error(description: "range \(quoted(String(item))) in \(quoted(String(entry))) goes down")
            }
            guard high - low < UInt64(maximumHosts) else { throw tooMany(entry) }
            ranges.append(Range(low: low, high: high, width: bounds[0].count))
        }
        return ranges
    }

    private static func size(of ranges: [Range]) -> Int {
        ranges.reduce(0) { $0 + Int($1.high - $1.low) + 1 }
    }

    /// Every number of `ranges` in order, each padded with zeros to its range's width.
    private static func numbers(_ ranges: [Range]) -> [String] {
        var numbers: [String] = []
        for range in ranges {
            for value in range.low...range.high {
                let digits = String(value)
                numbers.append(String(repeating: "0", count: max(0, range.width - digits.count)) + digits)
            }
        }
        return numbers
    }

    private static func reserve(_ count: Int, in hosts: [String]) throws(Error) {
        guard hosts.count + count <= maximumHosts else {
            throw Error(description: "host list expands to more than \(maximumHosts) hosts")
        }
    }

    private static func tooMany(_ entry: Substring) -> Error {
        Error(description: "\(quoted(String(entry))) expands to more than \(maximumHosts) hosts")
    }

    /// `text` quoted, cut short and with anything unprintable as '?': the error stays one short line
    /// whatever the variable holds.
    static func quoted(_ text: String) -> String {
        let visible = text.count > 80 ? text.prefix(77) + "..." : Substring(text)
        let printable = visible.map { character -> String in
            guard let ascii = character.asciiValue, (0x20..<0x7F).contains(ascii) else { return "?" }
            return String(character)
        }
        return "'" + printable.joined() + "'"
    }
}
