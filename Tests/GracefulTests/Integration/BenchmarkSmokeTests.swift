import Foundation
import Testing

/// `graceful-bench --quick` runs to the end and writes every figure docs/BENCHMARKS.md reports. A smoke
/// test only: it checks that the benchmark works, never how fast anything is.
@Suite struct BenchmarkSmokeTests {
    static let bench = URL(fileURLWithPath: Launched.graceful).deletingLastPathComponent()
        .appendingPathComponent("graceful-bench").path

    /// The figures every percentile summary holds.
    static let summaryKeys = ["samples", "p50", "p99", "max"]

    @Test func quickRunWritesEveryFigure() throws {
        let directory = try TemporaryDirectory()
        let json = directory.file("bench.json")
        let run = try Launched([Self.bench, "--quick", "--json", json], in: directory.path)
        #expect(try run.waitForExit(timeout: 300) == 0, "\(run.output)")

        let data = try #require(FileManager.default.contents(atPath: json), "no JSON written\n\(run.output)")
        let report = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        expectNumbers(report, ["schema"])
        expectNumbers(try object(report, "machine"), ["nproc", "memory_mb"])
        let limits = try object(report, "limits")
        for key in ["pipe_one_way_us", "socket_one_way_us", "signal_delivery_us", "inotify_rename_us"] {
            expectNumbers(try object(limits, key), Self.summaryKeys, key)
        }
        expectNumbers(
            try object(report, "step_cost"),
            ["swift_should_stop_ns", "python_should_stop_ns", "python_empty_loop_ns", "python_json_read_ns"])

        let fanOut = try entries(report, "fan_out")
        #expect(Set(fanOut.compactMap { $0["trigger"] as? String }) == ["signal", "control-file"])
        for entry in fanOut {
            expectNumbers(entry, ["ranks", "trials", "sampled_ranks", "clean_stops"], "fan_out")
            for key in [
                "every_rank_answered_ms", "stop_step_sent_ms", "sampled_in_hand_ms", "sampled_delivered_ms",
                "sampled_stop_step_ms", "per_sampled_rank_in_hand_ms", "detection_ms", "sampled_reaction_us",
            ] {
                expectNumbers(try object(entry, key), Self.summaryKeys, "fan_out \(key)")
            }
        }
        for entry in try entries(report, "raw_fan_out") {
            expectNumbers(entry, ["ranks"], "raw_fan_out")
            for key in ["every_peer_ms", "per_peer_ms"] { expectNumbers(try object(entry, key), Self.summaryKeys, key) }
        }
        for entry in try entries(report, "launch") {
            expectNumbers(entry, ["ranks", "launches"], "launch")
            for key in ["every_hello_sent_ms", "every_hello_relayed_ms"] {
                expectNumbers(try object(entry, key), Self.summaryKeys, key)
            }
        }
        for entry in try entries(report, "footprint") {
            expectNumbers(entry, [
                "ranks", "rank_lines_per_second", "seconds", "vm_rss_kb", "vm_hwm_kb", "cpu_ticks",
                "cpu_percent_ticks", "cpu_ms", "cpu_percent", "exit_code",
            ], "footprint")
        }
        let comparison = try object(report, "comparison")
        expectNumbers(try object(comparison, "graceful"), ["trivial_job_s", "agent_vm_hwm_kb"])
        #expect(try object(comparison, "torchrun")["available"] is Bool)
        let flood = try object(report, "flood")
        expectNumbers(flood, ["flood_s"], "flood")
        let stops = try entries(flood, "stop")
        #expect(Set(stops.compactMap { $0["console"] as? String }) == ["drained", "stalled"])
        for entry in stops {
            expectNumbers(entry, ["trials", "flood_s", "vm_rss_max_kb", "vm_hwm_max_kb", "clean_stops"], "flood stop")
            var keys = ["rank_ended_ms", "exited_ms", "relayed_mb_per_s"]
            if entry["console"] as? String == "drained" {
                keys.append("stop_line_ms")
                expectNumbers(entry, ["console_lines", "console_lines_dropped_reported"], "flood stop")
            }
            for key in keys { expectNumbers(try object(entry, key), Self.summaryKeys, "flood stop \(key)") }
        }
        for entry in try entries(flood, "throughput") {
            expectNumbers(entry, [
                "line_bytes", "lines", "payload_bytes", "wall_s", "log_bytes", "log_lines", "lines_per_s", "log_mb_per_s",
                "console_lines", "console_bytes", "console_lines_per_s", "console_mb_per_s",
                "console_lines_dropped_reported", "vm_rss_max_kb", "exit_code",
            ], "flood throughput")
            expectNumbers(try object(entry, "cat"), ["wall_s", "lines", "lines_per_s", "mb_per_s"], "flood throughput cat")
        }
        let multiNode = try object(report, "multinode")
        expectNumbers(multiNode, ["nodes", "trigger_node", "heartbeat_timeout_s"], "multinode")
        let multiNodeFanOut = try entries(multiNode, "fan_out")
        #expect(Set(multiNodeFanOut.compactMap { $0["trigger"] as? String }) == ["signal", "control-file"])
        for entry in multiNodeFanOut {
            expectNumbers(entry, ["ranks_per_node", "ranks", "trials", "clean_stops", "watched_ranks_per_node"], "multinode fan_out")
            for key in [
                "leader_heard_ms", "every_node_doorbell_ms", "first_node_doorbell_ms", "watched_doorbell_seen_ms", "per_watched_rank_doorbell_seen_ms",
                "every_rank_answered_ms", "every_node_stop_step_sent_ms", "last_confirmation_ms", "leader_committed_ms",
                "every_node_committed_ms", "leader_committed_after_last_confirmation_ms",
                "every_node_committed_after_last_confirmation_ms",
            ] {
                expectNumbers(try object(entry, key), Self.summaryKeys, "multinode fan_out \(key)")
            }
        }
        expectNumbers(try object(multiNode, "durable_replace_ms"), Self.summaryKeys, "multinode durable_replace_ms")
        let rawLoopback = try object(multiNode, "raw_loopback_fan_out")
        for key in ["every_peer_ms", "per_peer_ms"] {
            expectNumbers(try object(rawLoopback, key), Self.summaryKeys, "multinode raw_loopback_fan_out \(key)")
        }
        for entry in try entries(multiNode, "rendezvous") {
            expectNumbers(entry, ["ranks_per_node", "ranks", "launches", "launches_with_follower_retry"], "multinode rendezvous")
            for key in ["all_started_ms", "every_node_joined_ms", "every_node_launching_ms", "every_hello_sent_ms", "every_ready_relayed_ms"] {
                expectNumbers(try object(entry, key), Self.summaryKeys, "multinode rendezvous \(key)")
            }
        }
        for entry in try entries(multiNode, "idle") {
            expectNumbers(entry, [
                "ranks_per_node", "ranks", "seconds", "heartbeat_interval_s", "leader_cpu_percent", "follower_cpu_percent_max",
            ], "multinode idle")
            let nodes = try entries(entry, "nodes")
            #expect(nodes.count == 4)
            for node in nodes {
                expectNumbers(node, ["node", "cpu_ms", "cpu_percent", "cpu_ticks", "vm_rss_kb", "exit_code"], "multinode idle node")
            }
        }
        expectNumbers(try object(report, "clean"), ["launches", "clean_stops", "leftover_processes"])
    }

    private func object(_ parent: [String: Any], _ key: String) throws -> [String: Any] {
        try #require(parent[key] as? [String: Any], "\(key) is missing or not an object")
    }

    private func entries(_ parent: [String: Any], _ key: String) throws -> [[String: Any]] {
        let list = try #require(parent[key] as? [[String: Any]], "\(key) is missing or not a list")
        #expect(!list.isEmpty, "\(key) is empty")
        return list
    }

    /// Each key holds a number, not a boolean (JSON has no NaN: a figure that could not be measured
    /// is written as null, and fails here).
    private func expectNumbers(_ object: [String: Any], _ keys: [String], _ context: String = "") {
        for key in keys {
            let number = object[key] as? NSNumber
            // JSONSerialization gives true and false as NSNumbers of type "c" (char).
            let isBoolean = number.map { String(cString: $0.objCType) == "c" } ?? false
            #expect(number != nil && !isBoolean, "\(context) \(key) is \(String(describing: object[key]))")
        }
    }
}
