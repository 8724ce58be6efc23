import CloudScanCore
import CloudScanHTTP
import CloudScanKubernetes
import Foundation

/// One runner as its backend sees it: a Kubernetes Job, or a local process.
public struct RunnerRecord: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// Not finished (pending or running).
        case active
        /// Finished with success (the Job's `Complete=True`; exit status 0).
        case succeeded
        /// Finished with failure (the Job's `Failed=True` with its reason; a non-zero exit).
        case failed(reason: String, message: String?)
    }

    /// The Job's name (deterministic per scan attempt).
    public var name: String
    public var scanID: UUID
    public var organizationID: UUID
    public var attempt: Int
    public var state: State
    /// When it finished, if it did and the backend says.
    public var finishedAt: Date?

    public init(
        name: String, scanID: UUID, organizationID: UUID, attempt: Int, state: State, finishedAt: Date? = nil
    ) {
        self.name = name
        self.scanID = scanID
        self.organizationID = organizationID
        self.attempt = attempt
        self.state = state
        self.finishedAt = finishedAt
    }
}

/// What the sweeper needs of a backend: every runner it has, why one failed, and removing one.
public protocol RunnerInventory: Sendable {
    /// Every runner of cloudscan's, complete (all pages) or an error — never a partial view.
    func runners() async throws -> [RunnerRecord]
    /// The failed runner's own last words (a pod's termination message), if any.
    func terminationMessage(_ runner: RunnerRecord) async -> String?
    /// Removes the runner (stopping it if it still runs); one already gone is success.
    func remove(_ runner: RunnerRecord) async throws
}

extension KubernetesJobBackend: RunnerInventory {
    public func runners() async throws -> [RunnerRecord] {
        let jobs: [JobSummary]
        do {
            jobs = try await client.listAllJobSummaries(labelSelector: JobSpecBuilder.managedSelector).jobs
        } catch let error as KubernetesError {
            throw Self.classify(error)
        } catch let error as HTTPClientError {
            throw Self.unreachable(error)
        }
        return jobs.compactMap(Self.record)
    }

    /// A Job's record, from its labels and its final condition (read by type, never by position);
    /// nil for a Job without cloudscan's labels.
    static func record(_ job: JobSummary) -> RunnerRecord? {
        guard let name = job.metadata.name, let labels = job.metadata.labels,
            let scan = labels[JobSpecBuilder.Label.scanID].flatMap(UUID.init(uuidString:)),
            let organization = labels[JobSpecBuilder.Label.organizationID].flatMap(UUID.init(uuidString:)),
            let attempt = labels[JobSpecBuilder.Label.attempt].flatMap({ Int($0) })
        else { return nil }
        var state = RunnerRecord.State.active
        var finishedAt: Date?
        if let condition = job.finished {
            if condition.type == "Complete" {
                state = .succeeded
                finishedAt = job.status?.completionTime.flatMap(RFC3339.date(from:))
            } else {
                state = .failed(reason: condition.reason ?? "Failed", message: condition.message)
            }
            finishedAt = finishedAt ?? condition.lastTransitionTime.flatMap(RFC3339.date(from:))
        }
        return RunnerRecord(
            name: name, scanID: scan, organizationID: organization, attempt: attempt, state: state,
            finishedAt: finishedAt)
    }

    public func terminationMessage(_ runner: RunnerRecord) async -> String? {
        guard let pods = try? await client.listPods(labelSelector: "job-name=\(runner.name)") else { return nil }
        for pod in pods.items {
            for status in pod.status?.containerStatuses ?? [] {
                guard let terminated = status.state?.terminated else { continue }
                let text = terminated.message?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
                return text.isEmpty
                    ? "\(status.name) exited \(terminated.exitCode) (\(terminated.reason ?? "-"))"
                    : "\(status.name) exited \(terminated.exitCode): \(text)"
            }
        }
        return nil
    }

    public func remove(_ runner: RunnerRecord) async throws {
        try await stop(scanID: runner.scanID, attempt: runner.attempt)
    }
}
