import CloudScanCore
import CloudScanDispatcher
import CloudScanKubernetes
import CloudScanTestSupport
import Foundation
import Hummingbird
import KubernetesStandIn
import Logging
import Synchronization
import Testing

/// An in-test storage service speaking the GetArtifact contract: `GET /v1/artifacts?ref=` with
/// `Authorization: Bearer storage-token` and `X-Organization-Id`; `s3://bucket/<org>/…` belongs to
/// that organization; `…/missing…` is 404; `s3://bucket/flaky` answers 503 the first two times.
final class StorageStub: Sendable {
    let port: Int
    private let task: Task<Void, any Error>

    private init(port: Int, task: Task<Void, any Error>) {
        self.port = port
        self.task = task
    }

    static func start() async throws -> StorageStub {
        let box = Mutex<Int?>(nil)
        let counter = Mutex<Int>(0)
        let router = Router()
        router.get("/v1/artifacts") { request, _ -> Response in
            guard request.headers[.authorization] == "Bearer storage-token" else {
                return Response(status: .unauthorized)
            }
            let org = request.headers.first { $0.name.canonicalName == "x-organization-id" }?.value ?? ""
            let ref = request.uri.queryParameters["ref"].map(String.init) ?? ""
            if ref == "s3://bucket/flaky" {
                let calls = counter.withLock {
                    $0 += 1
                    return $0
                }
                if calls <= 2 { return Response(status: .serviceUnavailable) }
            }
            if ref.contains("missing") { return Response(status: .notFound) }
            if ref != "s3://bucket/flaky", !ref.hasPrefix("s3://bucket/\(org)/") { return Response(status: .forbidden) }
            let body =
                #"{"url":"https://storage.local/presigned/\#(ref.dropFirst(5))?sig=abc","expires_at":"2030-01-01T00:00:00Z"}"#
            return Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: .init(byteBuffer: ByteBuffer(string: body)))
        }
        // DeleteArtifact (the cleaner): 204 for the organization's, 404 when already gone, 403 for
        // another organization's, 500 for `s3://bucket/<org>/stuck`.
        router.delete("/v1/artifacts") { request, _ -> Response in
            guard request.headers[.authorization] == "Bearer storage-token" else {
                return Response(status: .unauthorized)
            }
            let org = request.headers.first { $0.name.canonicalName == "x-organization-id" }?.value ?? ""
            let ref = request.uri.queryParameters["ref"].map(String.init) ?? ""
            guard ref.hasPrefix("s3://bucket/\(org)/") else { return Response(status: .forbidden) }
            if ref.hasSuffix("/stuck") { return Response(status: .internalServerError) }
            if ref.contains("gone") { return Response(status: .notFound) }
            return Response(status: .noContent)
        }
        var logger = Logger(label: "storage")
        logger.logLevel = .critical
        let app = Application(
            router: router, configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in box.withLock { $0 = channel.localAddress?.port } }, logger: logger)
        let task = Task { try await app.runService(gracefulShutdownSignals: []) }
        while box.withLock({ $0 }) == nil { try await Task.sleep(for: .milliseconds(10)) }
        return StorageStub(port: box.withLock { $0 }!, task: task)
    }

    var url: String { "http://127.0.0.1:\(port)" }
    func stop() { task.cancel() }
}

@Suite("Artifact references (storage GetArtifact contract, in-test server)")
struct ArtifactResolverTests {
    @Test("DeleteArtifact (the cleaner): deleted or already gone is done; refused, failing or unreachable is not")
    func delete() async throws {
        let storage = try await StorageStub.start()
        defer { storage.stop() }
        let org = UUID()
        let mine = "s3://bucket/\(org.uuidString.lowercased())"
        let resolver = ArtifactResolver(storageURL: storage.url, token: "storage-token")
        #expect(await resolver.delete("\(mine)/a.tgz", organizationID: org))
        #expect(await resolver.delete("\(mine)/gone.tgz", organizationID: org), "404: already gone")
        #expect(await resolver.delete("\(mine)/stuck", organizationID: org) == false, "500: try again later")
        #expect(
            await resolver.delete("s3://bucket/\(UUID().uuidString.lowercased())/a.tgz", organizationID: org) == false)
        #expect(await resolver.delete("https://x/a.tgz", organizationID: org) == false, "not the storage service's")
        #expect(
            await ArtifactResolver(storageURL: "http://127.0.0.1:9", token: "t").delete(
                "\(mine)/a", organizationID: org)
                == false)
    }

    @Test(
        "https as it is, file only where the policy allows; s3:// → the presigned URL; 404 and 403 are permanent, 5xx and no server transient"
    )
    func resolver() async throws {
        let storage = try await StorageStub.start()
        defer { storage.stop() }
        let org = UUID()
        let resolver = ArtifactResolver(storageURL: storage.url, token: "storage-token")
        #expect(try await resolver.resolve("https://x/a.tgz", organizationID: org).url == "https://x/a.tgz")
        // The standard policy refuses files and plain http at dispatch too (a scan made before the
        // policy, or by any path, never reaches a runner); development and artifact roots admit them.
        for refused in ["file:///tmp/a.tgz", "http://storage.local/a.tgz", "ftp://x/a.tgz"] {
            let error = await #expect(throws: JobBackendError.self) {
                try await resolver.resolve(refused, organizationID: org)
            }
            #expect(error?.permanent == true && error?.reason == "artifact_refused", "\(refused)")
        }
        let development = ArtifactResolver(storageURL: storage.url, token: "storage-token", policy: .development)
        #expect(try await development.resolve("file:///tmp/a.tgz", organizationID: org).url == "file:///tmp/a.tgz")
        let rooted = ArtifactResolver(policy: ArtifactPolicy(fileRoots: ["/srv/artifacts/{organization_id}"]))
        let own = "file:///srv/artifacts/\(org.uuidString.lowercased())/a.tgz"
        #expect(try await rooted.resolve(own, organizationID: org).url == own)
        let other = await #expect(throws: JobBackendError.self) {
            try await rooted.resolve(
                "file:///srv/artifacts/\(UUID().uuidString.lowercased())/a.tgz", organizationID: org)
        }
        #expect(other?.reason == "artifact_refused", "another organization's directory")
        let resolved = try await resolver.resolve(
            "s3://bucket/\(org.uuidString.lowercased())/a.tgz", organizationID: org)
        #expect(resolved.url == "https://storage.local/presigned/bucket/\(org.uuidString.lowercased())/a.tgz?sig=abc")
        let missing = await #expect(throws: JobBackendError.self) {
            try await resolver.resolve("s3://bucket/\(org.uuidString.lowercased())/missing.tgz", organizationID: org)
        }
        #expect(missing?.permanent == true && missing?.reason == "artifact_not_found")
        let foreign = await #expect(throws: JobBackendError.self) {
            try await resolver.resolve("s3://bucket/\(UUID().uuidString.lowercased())/a.tgz", organizationID: org)
        }
        #expect(foreign?.permanent == true && foreign?.reason == "artifact_forbidden")
        let flaky = await #expect(throws: JobBackendError.self) {
            try await resolver.resolve("s3://bucket/flaky", organizationID: org)
        }
        #expect(flaky?.permanent == false)
        let unauthorized = await #expect(throws: JobBackendError.self) {
            try await ArtifactResolver(storageURL: storage.url, token: "wrong").resolve(
                "s3://bucket/x", organizationID: org)
        }
        #expect(unauthorized?.permanent == false, "a 401 is the storage service's configuration, not the scan's fault")
        let down = await #expect(throws: JobBackendError.self) {
            try await ArtifactResolver(storageURL: "http://127.0.0.1:9", token: "t").resolve(
                "s3://bucket/x", organizationID: org)
        }
        #expect(down?.permanent == false)
    }

    @Test(
        "dispatch resolves s3:// through the storage service: the Secret holds the presigned URL; a missing artifact fails the scan"
    )
    func dispatchWithStorage() async throws {
        let storage = try await StorageStub.start()
        defer { storage.stop() }
        try await DispatcherHarness.run(storage: (storage.url, "storage-token")) { h in
            let org = h.organization.uuidString.lowercased()
            let good = try await h.service.createScan(
                organizationID: h.organization,
                request: CreateScanRequest(
                    project: .init(externalKey: "proj-123"), scanTypes: ["sast"],
                    artifactURL: "s3://bucket/\(org)/src.tgz"))
            let missing = try await h.service.createScan(
                organizationID: h.organization,
                request: CreateScanRequest(
                    project: .init(externalKey: "proj-123"), scanTypes: ["sast"],
                    artifactURL: "s3://bucket/\(org)/missing.tgz"))
            let flaky = try await h.service.createScan(
                organizationID: h.organization,
                request: CreateScanRequest(
                    project: .init(externalKey: "proj-123"), scanTypes: ["sast"], artifactURL: "s3://bucket/flaky"))
            for scan in [good.scan, missing.scan, flaky.scan] {
                try await h.publish(
                    ScanCreateMessage(
                        scanID: scan.id, organizationID: h.organization, project: .init(id: scan.projectID),
                        scanTypes: [.sast],
                        artifact: .init(url: scan.artifactURL), requestedAt: scan.createdAt),
                    type: .scanCreate, routingKey: "scan.create", organization: h.organization)
            }
            try await h.eventually("the good one dispatched") { try await h.dispatchedWithJob(good.scan.id) }
            try await h.eventually("the flaky one dispatched after the storage service recovered") {
                try await h.dispatchedWithJob(flaky.scan.id)
            }
            try await h.eventually("the missing one failed") { try await h.status(missing.scan.id).0 == .failed }
            let reason = try await h.app.withTransaction(organizationID: h.organization) { c in
                try await c.query("SELECT failure_reason FROM scans WHERE id = \(missing.scan.id)").single().decode(
                    String.self, at: 0)
            }
            #expect(reason == "artifact_not_found")
            #expect(try await h.events(missing.scan.id) == ["queued", "dispatched", "failed"])
            let name = RunnerAssignment.jobName(scanID: good.scan.id, attempt: 1)
            let secret = try await KubernetesClient(
                configuration: .init(
                    server: h.standIn.server, namespace: DispatcherHarness.namespace,
                    token: KubernetesStandIn.adminToken)
            ).getSecret(name)
            #expect(secret.value("artifact-url") == "https://storage.local/presigned/bucket/\(org)/src.tgz?sig=abc")
            #expect(await h.jobNames().count == 2)
        }
    }
}
