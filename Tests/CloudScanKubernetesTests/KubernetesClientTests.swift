import CloudScanCore
import CloudScanHTTP
import CloudScanTestSupport
import Foundation
import KubernetesStandIn
import Testing

@testable import CloudScanKubernetes

/// The libcurl Kubernetes client against the stand-in (a real HTTP server on loopback).
@Suite("Kubernetes client (stand-in API server)")
struct KubernetesClientTests {
    static let namespace = "cloudscan"

    func withStandIn<R>(
        token: String? = KubernetesStandIn.adminToken, tokenFile: String? = nil, requestTimeout: Duration = .seconds(5),
        _ body: (KubernetesStandIn, KubernetesClient) async throws -> R
    ) async throws -> R {
        let standIn = try await KubernetesStandIn.start()
        defer { Task { await standIn.stop() } }
        let client = KubernetesClient(
            configuration: KubernetesConfiguration(
                server: standIn.server, namespace: Self.namespace, token: tokenFile == nil ? token : nil,
                tokenFile: tokenFile),
            requestTimeout: requestTimeout)
        return try await body(standIn, client)
    }

    static func assignment(attempt: Int = 1, types: [ScanType] = [.sast]) -> RunnerAssignment {
        RunnerAssignment(
            scanID: UUID(), organizationID: UUID(), attempt: attempt, scanTypes: types,
            artifactURL: "https://storage.local/a.tar.gz?sig=secret", timeoutSeconds: 900, runnerToken: "tok-123")
    }

    @Test("create answers the defaulted Job; a second create is AlreadyExists; get and 404")
    func createGet() async throws {
        try await withStandIn { _, client in
            let builder = JobSpecBuilder(configuration: .init(namespace: Self.namespace))
            let assignment = Self.assignment()
            let created = try await client.createJob(builder.job(assignment))
            let uid = try #require(created.metadata.uid)
            #expect(created.metadata.name == assignment.jobName)
            #expect(created.metadata.resourceVersion != nil)
            #expect(created.spec?.selector?.matchLabels == ["controller-uid": uid])
            let templateLabels = try #require(created.spec?.template.metadata?.labels)
            #expect(templateLabels["job-name"] == assignment.jobName)
            #expect(templateLabels["cloudscan.io/scan-id"] == assignment.scanID.uuidString.lowercased())
            let limits = created.spec?.template.spec?.containers?.first?.resources?.limits
            #expect(limits?["memory"] == "2Gi", "2048Mi comes back canonical")
            #expect(limits?["cpu"] == "2")
            #expect(created.spec?.backoffLimit == 0)

            let again = await #expect(throws: KubernetesError.self) {
                try await client.createJob(builder.job(assignment))
            }
            #expect(again?.isAlreadyExists == true)
            #expect(again?.status?.details?.kind == "jobs")

            let fetched = try await client.getJob(assignment.jobName)
            #expect(fetched.metadata.uid == uid)
            let missing = await #expect(throws: KubernetesError.self) { try await client.getJob("cloudscan-nope-1") }
            #expect(missing?.isNotFound == true)
            #expect(missing?.message == "jobs.batch \"cloudscan-nope-1\" not found")
        }
    }

    @Test("list pages by labelSelector with limit/continue; the last page has no continue; listAll gathers them")
    func listPages() async throws {
        try await withStandIn { standIn, client in
            let builder = JobSpecBuilder(configuration: .init(namespace: Self.namespace))
            for _ in 0..<5 { _ = try await client.createJob(builder.job(Self.assignment())) }
            let first = try await client.listJobs(labelSelector: JobSpecBuilder.managedSelector, limit: 2)
            #expect(first.items.count == 2)
            #expect(first.metadata.remainingItemCount == nil, "no remainingItemCount with a selector")
            let token = try #require(first.metadata.continue)
            let second = try await client.listJobs(
                labelSelector: JobSpecBuilder.managedSelector, limit: 2, continue: token)
            #expect(second.items.count == 2)
            #expect(second.metadata.resourceVersion == first.metadata.resourceVersion, "pages share the snapshot")
            let third = try await client.listJobs(
                labelSelector: JobSpecBuilder.managedSelector, limit: 2, continue: second.metadata.continue)
            #expect(third.items.count == 1)
            #expect(third.metadata.continue == nil)
            let names = (first.items + second.items + third.items).compactMap(\.metadata.name)
            #expect(names == names.sorted() && Set(names).count == 5)
            let all = try await client.listAllJobs(labelSelector: JobSpecBuilder.managedSelector, pageSize: 2)
            #expect(all.jobs.count == 5)
            // Without a selector the server says how many remain.
            let unselected = try await client.listJobs(limit: 2)
            #expect(unselected.metadata.remainingItemCount == 3)
            // A compacted continue token is 410 Expired; listAll starts over and still gets all 5.
            await standIn.cluster.compact()
            let expired = await #expect(throws: KubernetesError.self) {
                try await client.listJobs(labelSelector: JobSpecBuilder.managedSelector, limit: 2, continue: token)
            }
            #expect(expired?.isExpired == true)
            let exact = await #expect(throws: KubernetesError.self) {
                try await client.listJobs(
                    resourceVersion: first.metadata.resourceVersion, resourceVersionMatch: "Exact")
            }
            #expect(exact?.isExpired == true)
            #expect(exact?.message == "The resourceVersion for the provided list is too old.")
            let forbidden = await #expect(throws: KubernetesError.self) {
                try await client.listJobs(resourceVersionMatch: "Exact")
            }
            #expect(forbidden?.httpStatus == 422)
        }
    }

    @Test(
        "watch from a list's resourceVersion sees ADDED, MODIFIED (started, Complete) and DELETED; a compacted one ends with 410"
    )
    func watch() async throws {
        try await withStandIn { standIn, client in
            let builder = JobSpecBuilder(configuration: .init(namespace: Self.namespace))
            let listed = try await client.listJobs(labelSelector: JobSpecBuilder.managedSelector)
            let events = try await client.watchJobs(
                labelSelector: JobSpecBuilder.managedSelector, resourceVersion: listed.metadata.resourceVersion,
                timeoutSeconds: 10)
            let assignment = Self.assignment()
            _ = try await client.createJob(builder.job(assignment))
            var seen: [String] = []
            var sawStart = false
            for try await event in events {
                switch event {
                case .added(let job):
                    #expect(job.metadata.name == assignment.jobName)
                    seen.append("ADDED")
                case .modified(let job):
                    seen.append("MODIFIED")
                    if job.status?.active == 1, !sawStart {
                        sawStart = true
                        await standIn.cluster.completeJob(namespace: Self.namespace, name: assignment.jobName)
                    } else if let finished = job.finished {
                        #expect(finished.type == "Complete")
                        #expect(finished.reason == nil, "1.20's Complete condition has no reason")
                        #expect(job.status?.completionTime != nil)
                        try await client.deleteJob(assignment.jobName)
                    }
                case .deleted(let job):
                    seen.append("DELETED")
                    #expect(job.metadata.name == assignment.jobName)
                case .bookmark: seen.append("BOOKMARK")
                }
                if seen.last == "DELETED" { break }
            }
            #expect(seen == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"])

            await standIn.cluster.compact()
            let stale = try await client.watchJobs(resourceVersion: listed.metadata.resourceVersion, timeoutSeconds: 5)
            let error = await #expect(throws: KubernetesError.self) { for try await _ in stale {} }
            #expect(error?.isExpired == true)
            #expect(error?.message == "The resourceVersion for the provided watch is too old.")
        }
    }

    @Test("delete: Background answers a Status and the GC removes pods and owned Secrets; 404; precondition conflict")
    func delete() async throws {
        try await withStandIn { standIn, client in
            let builder = JobSpecBuilder(configuration: .init(namespace: Self.namespace))
            let assignment = Self.assignment()
            let secret = try await client.createSecret(builder.secret(assignment))
            #expect(secret.value("runner-token") == "tok-123")
            let job = try await client.createJob(builder.job(assignment))
            let owned = try await client.setSecretOwner(
                assignment.jobName,
                owner: OwnerReference(
                    apiVersion: "batch/v1", kind: "Job", name: assignment.jobName, uid: job.metadata.uid!))
            #expect(owned.metadata.ownerReferences?.first?.uid == job.metadata.uid)
            try await waitUntil {
                try await client.listPods(labelSelector: "job-name=\(assignment.jobName)").items.count == 1
            }
            let pod = try #require(
                try await client.listPods(labelSelector: "job-name=\(assignment.jobName)").items.first)
            #expect(pod.metadata.ownerReferences?.first?.controller == true)
            #expect(
                try await client.podLog(pod.metadata.name!, container: "runner") == "", "a pending pod's log is 204")
            let badContainer = await #expect(throws: KubernetesError.self) {
                try await client.podLog(pod.metadata.name!, container: "scanner")
            }
            #expect(badContainer?.httpStatus == 400)
            let conflict = await #expect(throws: KubernetesError.self) {
                try await client.deleteJob(assignment.jobName, preconditionUID: UUID().uuidString.lowercased())
            }
            #expect(conflict?.isConflict == true)
            try await client.deleteJob(assignment.jobName)
            try await waitUntil {
                let pods = try await client.listPods(labelSelector: "job-name=\(assignment.jobName)").items
                let secrets = await standIn.cluster.secretNames(namespace: Self.namespace)
                return pods.isEmpty && secrets.isEmpty
            }
            let gone = await #expect(throws: KubernetesError.self) { try await client.deleteJob(assignment.jobName) }
            #expect(gone?.isNotFound == true)
        }
    }

    @Test("auth: no token is 403 system:anonymous, a bad one 401; a rotated token file is re-read after a 401")
    func authentication() async throws {
        try await withStandIn(token: nil) { _, client in
            let error = await #expect(throws: KubernetesError.self) { try await client.listJobs() }
            #expect(error?.httpStatus == 403)
            #expect(error?.message.contains("system:anonymous") == true)
        }
        try await withStandIn(token: "wrong") { _, client in
            let error = await #expect(throws: KubernetesError.self) { try await client.listJobs() }
            #expect(error?.httpStatus == 401)
            #expect(error?.reason == "Unauthorized")
        }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("token-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: file) }
        try "expired-token\n".write(to: file, atomically: true, encoding: .utf8)
        try await withStandIn(tokenFile: file.path) { _, client in
            _ = await #expect(throws: KubernetesError.self) { try await client.listJobs() }
            try "\(KubernetesStandIn.adminToken)\n".write(to: file, atomically: true, encoding: .utf8)
            // The cached token is still the old one; the 401 makes the client read the file again.
            let list = try await client.listJobs()
            #expect(list.items.isEmpty)
        }
    }

    @Test("faults: a 500 is a retryable KubernetesError; a stall past the request time-out is a time-out")
    func faults() async throws {
        try await withStandIn { standIn, client in
            await standIn.cluster.inject(.status(500), method: "POST")
            let error = await #expect(throws: KubernetesError.self) {
                try await client.createJob(
                    JobSpecBuilder(configuration: .init(namespace: Self.namespace)).job(Self.assignment()))
            }
            #expect(error?.isRetryable == true)
            #expect(kubernetesErrorIsRetryable(error!))
            await standIn.cluster.inject(.delay(.seconds(8)), method: "GET")
            let timeout = await #expect(throws: HTTPClientError.self) { try await client.listJobs() }
            #expect(timeout?.code == .timedOut)
            #expect(kubernetesErrorIsRetryable(timeout!))
        }
    }

    @Test("requests run side by side: ten stalled calls are all at the server before the first returns")
    func concurrency() async throws {
        // A generous time-out: this is about the calls overlapping, not about latency on a busy machine.
        try await withStandIn(requestTimeout: .seconds(30)) { standIn, client in
            await standIn.cluster.inject(.delay(.seconds(2)), times: 10, method: "GET")
            try await withThrowingTaskGroup(of: Void.self) { group in
                for _ in 0..<10 { group.addTask { _ = try await client.listJobs() } }
                try await group.next()
                // On a thread pool the width of the cores, most would still be waiting to be sent.
                #expect(await standIn.cluster.arrivals == 10)
                try await group.waitForAll()
            }
        }
    }

    func waitUntil(_ condition: () async throws -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while try await !condition() {
            guard ContinuousClock.now < deadline else {
                Issue.record("condition not met within 5 s")
                return
            }
            try await Task.sleep(for: .milliseconds(20))
        }
    }
}

@Suite("Kubernetes stand-in with the official Python client")
struct StandInPythonClientTests {
    @Test("kubernetes (PyPI) creates, lists by page, watches, deletes and reads logs against the stand-in")
    func pythonClient() async throws {
        let standIn = try await KubernetesStandIn.start()
        defer { Task { await standIn.stop() } }
        let python = TestDatabase.repositoryRoot.appendingPathComponent(".venv/bin/python").path
        let script = TestDatabase.repositoryRoot.appendingPathComponent("Tests/clients/kube_client.py").path
        let (status, output) = try await runCommandCapturingOutput([
            python, script, standIn.server, KubernetesStandIn.adminToken, "cloudscan",
        ])
        print(output)
        #expect(status == 0, "\(output)")
        #expect(output.contains("0 failed"))
        #expect(!output.contains("FAIL"))
    }
}
