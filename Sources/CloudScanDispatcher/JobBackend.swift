import CloudScanHTTP
import CloudScanKubernetes
import Foundation
import Logging

/// Runs one attempt of a scan somewhere: a Kubernetes Job, or a local child process.
public protocol JobBackend: Sendable {
    /// Starts the attempt's runner. Idempotent: starting an attempt that already started is success.
    func start(_ assignment: RunnerAssignment) async throws
    /// Stops the attempt's runner; one already gone (or never started) is success.
    func stop(scanID: UUID, attempt: Int) async throws
}

/// Why a backend could not start or stop a runner.
public struct JobBackendError: Error, CustomStringConvertible, Sendable {
    /// Retrying cannot help (the spec was refused): the scan fails with ``reason``.
    public var permanent: Bool
    public var reason: String
    public var message: String
    public init(permanent: Bool, reason: String, message: String) {
        self.permanent = permanent
        self.reason = reason
        self.message = message
    }
    public var description: String {
        "JobBackendError(\(permanent ? "permanent" : "transient"), \(reason): \(message))"
    }
}

/// Runners as Kubernetes Jobs: the attempt's Secret (runner token, artifact URL), then the Job,
/// then the Secret is made the Job's, so the garbage collector removes both together.
public struct KubernetesJobBackend: JobBackend {
    public let client: KubernetesClient
    public let builder: JobSpecBuilder
    let logger: Logger

    public init(client: KubernetesClient, builder: JobSpecBuilder, logger: Logger) {
        self.client = client
        self.builder = builder
        self.logger = logger
    }

    public func start(_ assignment: RunnerAssignment) async throws {
        do {
            var madeSecret = false
            do {
                _ = try await client.createSecret(builder.secret(assignment))
                madeSecret = true
            } catch let error as KubernetesError where error.isAlreadyExists {
                // A redelivery: the token is an HMAC of the attempt, so the Secret holds the same —
                // if it is this scan's and organization's, not a stranger's of the same name.
                let existing = try await client.getSecret(assignment.jobName)
                try Self.requireOwnLabels(existing.metadata.labels, assignment, what: "Secret")
            }
            let job: Job
            do {
                job = try await client.createJob(builder.job(assignment))
            } catch let error as KubernetesError where error.isAlreadyExists {
                // The deterministic name: this attempt's Job exists already (a redelivery after a
                // crash). Make sure it is this scan's, not a stranger's with the same name.
                job = try await client.getJob(assignment.jobName)
                do {
                    try Self.requireOwnLabels(job.metadata.labels, assignment, what: "Job")
                } catch {
                    // The Secret made just now would outlive the refusal (nothing owns it).
                    if madeSecret { try? await client.deleteSecret(assignment.jobName) }
                    throw error
                }
            }
            if let uid = job.metadata.uid {
                _ = try await client.setSecretOwner(
                    assignment.jobName,
                    owner: OwnerReference(
                        apiVersion: "batch/v1", kind: "Job", name: assignment.jobName, uid: uid, controller: false,
                        blockOwnerDeletion: false))
            }
        } catch let error as KubernetesError {
            throw Self.classify(error)
        } catch let error as HTTPClientError {
            throw Self.unreachable(error)
        }
    }

    public func stop(scanID: UUID, attempt: Int) async throws {
        let name = RunnerAssignment.jobName(scanID: scanID, attempt: attempt)
        do {
            try await client.deleteJob(name, propagation: .background)
        } catch let error as KubernetesError where error.isNotFound {
            // Never created, or already gone: stopped either way.
        } catch let error as KubernetesError {
            throw Self.classify(error)
        } catch let error as HTTPClientError {
            throw Self.unreachable(error)
        }
        do {
            try await client.deleteSecret(name)
        } catch let error as KubernetesError where error.isNotFound {
        } catch let error as KubernetesError {
            throw Self.classify(error)
        } catch let error as HTTPClientError {
            throw Self.unreachable(error)
        }
    }

    /// An existing object of the attempt's name must carry this scan's and this organization's
    /// labels: a name is the scan id, but only the pair says whose it is.
    static func requireOwnLabels(_ labels: [String: String]?, _ assignment: RunnerAssignment, what: String) throws {
        let scan = labels?[JobSpecBuilder.Label.scanID]
        let organization = labels?[JobSpecBuilder.Label.organizationID]
        guard scan == assignment.scanID.uuidString.lowercased(),
            organization == assignment.organizationID.uuidString.lowercased()
        else {
            throw JobBackendError(
                permanent: true, reason: "job_name_conflict",
                message: "\(what) \(assignment.jobName) exists for another scan or organization")
        }
    }

    /// No answer (time-out, refused connection, TLS): transient. Left unclassified it would reach
    /// the consumer as a crash, be requeued, and be dead-lettered at the delivery limit during a
    /// long API-server outage — a dispatch lost.
    static func unreachable(_ error: HTTPClientError) -> JobBackendError {
        JobBackendError(permanent: false, reason: "kubernetes_unavailable", message: "\(error)")
    }

    /// 422 Invalid / 400 BadRequest: the spec itself is wrong, retrying cannot help. Everything
    /// else (5xx, 429, 401 after a token re-read, 403 until RBAC is fixed) is worth another try.
    static func classify(_ error: KubernetesError) -> JobBackendError {
        let permanent = error.httpStatus == 422 || error.httpStatus == 400
        return JobBackendError(
            permanent: permanent, reason: permanent ? "job_rejected" : "kubernetes_unavailable",
            message: "\(error.httpStatus) \(error.reason ?? "-"): \(error.message)")
    }
}
