/// The per-rank table printed when a run ends.
public enum RunSummary {
    /// One line per rank plus a header, aligned in columns.
    /// `firstRank`: the global rank of the first row (a node of a multi-node job shows its own).
    public static func table(ranks: [RankRecord], pids: [Int32], firstRank: Int = 0) -> [String] {
        var rows = [["rank", "pid", "ended", "confirmed", "checkpoint", "note"]]
        for (index, rank) in ranks.enumerated() {
            rows.append([
                String(firstRank + index),
                index < pids.count ? String(pids[index]) : "-",
                rank.exit.map(describe) ?? "running",
                rank.confirmation.map { String($0.step) } ?? (rank.speaksProtocol ? nothing : plain),
                rank.confirmation?.path?.description ?? (rank.speaksProtocol ? nothing : plain),
                rank.note.map { "\($0)" } ?? "",
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        var lines = rows.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column])
            }.joined(separator: "  ").trimmingTrailingSpaces()
        }
        var legend: [String] = []
        if ranks.contains(where: { !$0.speaksProtocol }) { legend.append("\(plain): never said hello (no client, or still starting)") }
        if ranks.contains(where: { $0.speaksProtocol && $0.confirmation == nil }) { legend.append("\(nothing): nothing confirmed") }
        if !legend.isEmpty { lines.append("(" + legend.joined(separator: "; ") + ")") }
        return lines
    }

    private static let plain = "n/a"
    private static let nothing = "-"

    private static func describe(_ status: ExitStatus) -> String {
        switch status {
        case .exited(let code): return "exit \(code)"
        case .signaled(let signal): return SignalNumber.name(signal)
        }
    }
}

extension String {
    func padding(toLength length: Int) -> String {
        count >= length ? self : self + String(repeating: " ", count: length - count)
    }

    func trimmingTrailingSpaces() -> String {
        var result = self
        while result.last == " " { result.removeLast() }
        return result
    }
}
