import CGraceful
import Glibc
import GracefulProtocol

/// Everything checked before the first rank starts, in an order that touches nothing until the
/// command is known to run and the run directory is this run's alone.
struct Preflight {
    let runDirectory: String
    let executable: String
    /// The run directory's lock, held until the coordinator ends (and by its guard after it).
    let lock: RunDirectoryLock
    let resume: CommitRecord?
    /// The record of a run that completed, just moved aside: this launch starts from scratch.
    let completedRecord: CommitRecord?
    /// The soft limit of open files the coordinator was started with, for the ranks; -1: unlimited.
    let rankOpenFilesLimit: Int
    /// The job's secret, for a multi-node job.
    let clusterSecret: [UInt8]?

    static func check(_ configuration: RunConfiguration, warn: (String) -> Void) throws(RunFailure) -> Preflight {
        let clusterSecret = try configuration.cluster.map { options throws(RunFailure) in try secret(options.token) }
        let watcher = ControlFileWatcher(path: configuration.controlFile, watching: false)
        if watcher.evaluate(warn: warn) {
            throw .controlFileRequestsExit(path: configuration.controlFile)
        }
        let executable: String
        do {
            executable = try ExecutableLookup.resolve(configuration.command[0], path: getenv("PATH").map { String(cString: $0) })
        } catch {
            switch error {
            case .notFound(let name): throw .commandNotFound(name)
            case .notExecutable(let name): throw .commandNotExecutable(name, reason: nil)
            }
        }
        var previousLimit = -1
        let limit = graceful_raise_nofile_limit(&previousLimit)
        // Four descriptors per rank (channel, two pipes, log) and a pidfd, plus a few of our own.
        let needed = configuration.ranks * 5 + 64
        if limit >= 0 && limit < needed { throw .tooFewOpenFiles(needed: needed, limit: limit) }

        let runDirectory = absolutePath(configuration.effectiveRunDirectory)
        do {
            try makeDirectories(runDirectory)
        } catch {
            throw .runDirectory(error)
        }
        let lock: RunDirectoryLock
        do {
            lock = try RunDirectoryLock.acquire(in: runDirectory)
        } catch {
            switch error {
            case .busy(let holder):
                let inside = getenv("GRACEFUL_RUN_DIR").map { absolutePath(String(cString: $0)) } == runDirectory
                throw .runDirectoryBusy(directory: runDirectory, holder: holder, insideRank: inside)
            case .system(let failure):
                throw .runDirectory(failure)
            }
        }
        do throws(RunFailure) {
            if let failure = lock.probeWriting(in: runDirectory) { throw RunFailure.runDirectory(failure) }
            let recordPath = runDirectory + "/" + CommitRecord.fileName
            // Only now: a temporary of another live run's commit must never be removed.
            AtomicFile.removeTemporaries(of: recordPath)
            var resume = try loadRecord(recordPath)
            var completedRecord: CommitRecord?
            if let record = resume, record.completed != nil {
                // Never a silent rewind: a finished run's record is kept aside, not resumed from.
                let aside = runDirectory + "/" + CommitRecord.completedFileName
                if rename(recordPath, aside) != 0 { throw RunFailure.runDirectory(SystemError("rename \(recordPath) to \(aside)")) }
                (resume, completedRecord) = (nil, record)
            }
            let worldSize = configuration.ranks * (configuration.cluster?.nodeCount ?? 1)
            if let resume, resume.worldSize != worldSize {
                throw RunFailure.recordWorldSize(path: recordPath, committed: resume.worldSize, asked: worldSize)
            }
            if let resume {
                // Another node's checkpoints may live on a disk this machine does not see.
                let first = (configuration.cluster?.nodeRank ?? 0) * configuration.ranks
                for rank in first..<(first + configuration.ranks) {
                    guard let path = resume.resumePath(rank: rank) else { continue }
                    if !path.exists {
                        warn("warning: rank \(rank)'s committed checkpoint \(path) does not exist (\(SystemError("stat").reason)); the rank is handed it all the same")
                    }
                }
            }
            return Preflight(
                runDirectory: runDirectory, executable: executable, lock: lock, resume: resume,
                completedRecord: completedRecord, rankOpenFilesLimit: previousLimit, clusterSecret: clusterSecret)
        } catch {
            lock.release()
            throw error
        }
    }

    /// The job token: `GRACEFUL_JOB_TOKEN`, or the file's contents without a final newline.
    private static func secret(_ source: ClusterOptions.TokenSource) throws(RunFailure) -> [UInt8] {
        var token: [UInt8]
        switch source {
        case .environment:
            guard let value = getenv("GRACEFUL_JOB_TOKEN") else { throw .token("GRACEFUL_JOB_TOKEN is not set") }
            token = Array(String(cString: value).utf8)
        case .file(let path):
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .token("cannot read the token file \(path) (\(SystemError("open").reason))") }
            defer { closeDescriptor(fd) }
            token = []
            var buffer = [UInt8](repeating: 0, count: 4096)
            while token.count <= 65536 {
                let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count <= 0 { break }
                token += buffer[0..<count]
            }
            while token.last == UInt8(ascii: "\n") || token.last == UInt8(ascii: "\r") { token.removeLast() }
        }
        guard token.count >= ClusterOptions.minimumTokenLength else {
            throw .token("the job token has \(token.count) byte(s); it needs at least \(ClusterOptions.minimumTokenLength)")
        }
        return token
    }

    private static func loadRecord(_ path: String) throws(RunFailure) -> CommitRecord? {
        do {
            return try CommitRecord.load(from: path)
        } catch {
            throw .unusableRecord(path: path, reason: "\(error)")
        }
    }
}
