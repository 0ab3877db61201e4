/// The per-rank table printed when a run ends.
public enum RunSummary {
    /// One line per rank plus a header, aligned in columns.
    public static func table(ranks: [RankRecord], pids: [Int32]) -> [String] {
        var rows = [["rank", "pid", "ended", "confirmed", "checkpoint", "note"]]
        for (index, rank) in ranks.enumerated() {
            rows.append([
                String(index),
                index < pids.count ? String(pids[index]) : "-",
                rank.exit.map(describe) ?? "running",
                rank.confirmation.map { String($0.step) } ?? (rank.speaksProtocol ? "-" : "n/a"),
                rank.confirmation?.path?.description ?? "-",
                rank.note.map { "\($0)" } ?? "",
            ])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell.padding(toLength: widths[column])
            }.joined(separator: "  ").trimmingTrailingSpaces()
        }
    }

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
