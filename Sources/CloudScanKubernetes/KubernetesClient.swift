import CloudScanHTTP
import Foundation
import Synchronization

/// An error answer of the API server (its `kind: Status` body), or a body that could not be read.
public struct KubernetesError: Error, CustomStringConvertible, Sendable {
    /// The HTTP status (for an ERROR watch event: the Status's code).
    public var httpStatus: Int
    public var status: KubernetesStatus?

    public var reason: String? { status?.reason }
    public var message: String { status?.message ?? "HTTP \(httpStatus)" }
    public var isNotFound: Bool { httpStatus == 404 }
    public var isAlreadyExists: Bool { httpStatus == 409 && reason == "AlreadyExists" }
    public var isConflict: Bool { httpStatus == 409 && reason != "AlreadyExists" }
    /// 410 Expired (a compacted resourceVersion or continue token): list again from scratch.
    public var isExpired: Bool { httpStatus == 410 }
    /// Worth another try after a pause: throttling, server errors, time-outs reported by the server.
    public var isRetryable: Bool { httpStatus == 429 || httpStatus >= 500 || httpStatus == 408 }
    public var description: String {
        "KubernetesError(\(httpStatus) \(reason ?? "-"): \(message))"
    }
}

/// Whether an error from ``KubernetesClient`` is worth retrying (transport failures included).
public func kubernetesErrorIsRetryable(_ error: any Error) -> Bool {
    switch error {
    case let error as KubernetesError: return error.isRetryable || error.httpStatus == 401
    case let error as HTTPClientError: return error.code != .responseTooLarge && error.code != .tls
    default: return false
    }
}

/// Propagation of a delete to the Job's pods. A delete without one orphans them (batch/v1's default).
public enum PropagationPolicy: String, Sendable {
    case background = "Background"
    case foreground = "Foreground"
    case orphan = "Orphan"
}

/// The Kubernetes API over libcurl: batch/v1 Jobs, pods and their logs, Secrets, in one namespace.
public final class KubernetesClient: Sendable {
    public let configuration: KubernetesConfiguration
    private let http: CurlHTTPClient
    private let token: TokenSource?
    /// Bound on one request (a watch gets its own, from its timeoutSeconds).
    public let requestTimeout: Duration

    public init(configuration: KubernetesConfiguration, requestTimeout: Duration = .seconds(15)) {
        self.configuration = configuration
        self.requestTimeout = requestTimeout
        self.http = CurlHTTPClient(
            configuration: HTTPClientConfiguration(
                caFile: configuration.caFile, caPEM: configuration.caPEM,
                clientCertificateFile: configuration.clientCertificateFile,
                clientKeyFile: configuration.clientKeyFile,
                clientCertificatePEM: configuration.clientCertificatePEM, clientKeyPEM: configuration.clientKeyPEM,
                userAgent: configuration.userAgent))
        if let file = configuration.tokenFile {
            token = TokenSource(file: file)
        } else if let fixed = configuration.token {
            token = TokenSource(fixed: fixed)
        } else {
            token = nil
        }
    }

    public var namespace: String { configuration.namespace }

    // MARK: Jobs

    private var jobsPath: String { "/apis/batch/v1/namespaces/\(Self.segment(namespace))/jobs" }

    public func createJob(_ job: Job) async throws -> Job {
        try await send("POST", jobsPath, body: job)
    }

    public func getJob(_ name: String) async throws -> Job {
        try await send("GET", "\(jobsPath)/\(Self.segment(name))")
    }

    public func listJobs(
        labelSelector: String? = nil, limit: Int? = nil, continue token: String? = nil,
        resourceVersion: String? = nil, resourceVersionMatch: String? = nil
    ) async throws -> KubernetesList<Job> {
        var query: [(String, String)] = []
        if let labelSelector { query.append(("labelSelector", labelSelector)) }
        if let limit { query.append(("limit", String(limit))) }
        if let token { query.append(("continue", token)) }
        if let resourceVersion { query.append(("resourceVersion", resourceVersion)) }
        if let resourceVersionMatch { query.append(("resourceVersionMatch", resourceVersionMatch)) }
        return try await send("GET", jobsPath, query: query)
    }

    /// Every Job matching the selector, page by page (a 410 on a continue token restarts the list).
    public func listAllJobs(labelSelector: String, pageSize: Int = 500) async throws -> (
        jobs: [Job], resourceVersion: String?
    ) {
        try await listAll(Job.self, labelSelector: labelSelector, pageSize: pageSize)
    }

    /// ``listAllJobs(labelSelector:pageSize:)`` decoding only metadata and status.
    public func listAllJobSummaries(labelSelector: String, pageSize: Int = 500) async throws -> (
        jobs: [JobSummary], resourceVersion: String?
    ) {
        try await listAll(JobSummary.self, labelSelector: labelSelector, pageSize: pageSize)
    }

    private func listAll<Item: Codable & Sendable & Equatable>(
        _ type: Item.Type, labelSelector: String, pageSize: Int
    ) async throws -> (jobs: [Item], resourceVersion: String?) {
        var jobs: [Item] = []
        var token: String?
        var restarts = 0
        while true {
            do {
                let query: [(String, String)] =
                    [("labelSelector", labelSelector), ("limit", String(pageSize))]
                    + (token.map { [("continue", $0)] } ?? [])
                let page: KubernetesList<Item> = try await send("GET", jobsPath, query: query)
                jobs += page.items
                guard let next = page.metadata.continue, !next.isEmpty else {
                    return (jobs, page.metadata.resourceVersion)
                }
                token = next
            } catch let error as KubernetesError where error.isExpired && token != nil && restarts < 3 {
                jobs = []
                token = nil
                restarts += 1
            }
        }
    }

    /// Deletes the Job and (by default) its pods, in the background. A Job already gone is a
    /// ``KubernetesError`` with ``KubernetesError/isNotFound``.
    public func deleteJob(
        _ name: String, propagation: PropagationPolicy = .background, preconditionUID: String? = nil
    ) async throws {
        struct Options: Encodable {
            struct Preconditions: Encodable { var uid: String }
            var kind = "DeleteOptions"
            var apiVersion = "v1"
            var propagationPolicy: String
            var preconditions: Preconditions?
        }
        let options = Options(
            propagationPolicy: propagation.rawValue, preconditions: preconditionUID.map { .init(uid: $0) })
        _ = try await raw("DELETE", "\(jobsPath)/\(Self.segment(name))", body: try Self.encoder.encode(options))
    }

    /// Watches Jobs from `resourceVersion` (from a list) until the server ends the stream at
    /// `timeoutSeconds`. An expired resourceVersion — HTTP 410, or an ERROR event inside the 200
    /// stream — ends the stream with a ``KubernetesError`` whose ``KubernetesError/isExpired`` is
    /// true: list again, then watch from the new list's resourceVersion.
    public func watchJobs(
        labelSelector: String? = nil, resourceVersion: String?, timeoutSeconds: Int = 300
    ) async throws -> AsyncThrowingStream<WatchEvent<Job>, any Error> {
        var query: [(String, String)] = [("watch", "1"), ("allowWatchBookmarks", "true")]
        if let labelSelector { query.append(("labelSelector", labelSelector)) }
        if let resourceVersion { query.append(("resourceVersion", resourceVersion)) }
        query.append(("timeoutSeconds", String(timeoutSeconds)))
        let request = try await request(
            "GET", jobsPath, query: query, body: nil, timeout: .seconds(timeoutSeconds + 30))
        let response = try await http.stream(request)
        guard response.status == 200 else {
            var body: [UInt8] = []
            for try await chunk in response.body where body.count < 1 << 20 { body += chunk }
            throw Self.failure(status: response.status, body: body)
        }
        let (events, continuation) = AsyncThrowingStream<WatchEvent<Job>, any Error>.makeStream()
        let task = Task {
            var buffer: [UInt8] = []
            do {
                for try await chunk in response.body {
                    buffer += chunk
                    while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
                        let line = Array(buffer[..<newline])
                        buffer.removeSubrange(...newline)
                        if line.allSatisfy({ $0 == 32 || $0 == 13 }) { continue }
                        continuation.yield(try Self.decodeEvent(line))
                    }
                }
                if !buffer.allSatisfy({ $0 == 32 || $0 == 13 || $0 == 10 }) {
                    continuation.yield(try Self.decodeEvent(buffer))
                }
                continuation.finish()
            } catch {
                continuation.finish(throwing: error)
            }
        }
        continuation.onTermination = { _ in task.cancel() }
        return events
    }

    static func decodeEvent(_ line: [UInt8]) throws -> WatchEvent<Job> {
        struct Envelope: Decodable { var type: String }
        struct Typed<T: Decodable>: Decodable { var object: T }
        struct Bookmark: Decodable {
            struct Meta: Decodable { var resourceVersion: String? }
            var metadata: Meta?
        }
        let data = Data(line)
        let type = try decoder.decode(Envelope.self, from: data).type
        switch type {
        case "ADDED": return .added(try decoder.decode(Typed<Job>.self, from: data).object)
        case "MODIFIED": return .modified(try decoder.decode(Typed<Job>.self, from: data).object)
        case "DELETED": return .deleted(try decoder.decode(Typed<Job>.self, from: data).object)
        case "BOOKMARK":
            return .bookmark(
                resourceVersion: (try? decoder.decode(Typed<Bookmark>.self, from: data))?.object.metadata?
                    .resourceVersion)
        case "ERROR":
            let status = try decoder.decode(Typed<KubernetesStatus>.self, from: data).object
            throw KubernetesError(httpStatus: status.code ?? 500, status: status)
        default:
            throw KubernetesError(
                httpStatus: 500,
                status: KubernetesStatus(message: "unknown watch event type \(type)", reason: "InternalError"))
        }
    }

    // MARK: Pods

    private var podsPath: String { "/api/v1/namespaces/\(Self.segment(namespace))/pods" }

    /// A Job's pods: `labelSelector: "job-name=<job>"`.
    public func listPods(labelSelector: String) async throws -> KubernetesList<Pod> {
        try await send("GET", podsPath, query: [("labelSelector", labelSelector)])
    }

    /// The tail of a container's log; empty for a pod that has not started (the server answers
    /// 204 with no body).
    public func podLog(_ pod: String, container: String? = nil, tailLines: Int = 50, limitBytes: Int = 16_384)
        async throws -> String
    {
        var query: [(String, String)] = [("tailLines", String(tailLines)), ("limitBytes", String(limitBytes))]
        if let container { query.append(("container", container)) }
        let response = try await raw("GET", "\(podsPath)/\(Self.segment(pod))/log", query: query)
        return String(decoding: response.body, as: UTF8.self)
    }

    // MARK: Secrets

    private var secretsPath: String { "/api/v1/namespaces/\(Self.segment(namespace))/secrets" }

    public func createSecret(_ secret: Secret) async throws -> Secret {
        try await send("POST", secretsPath, body: secret)
    }

    public func getSecret(_ name: String) async throws -> Secret {
        try await send("GET", "\(secretsPath)/\(Self.segment(name))")
    }

    /// Makes the Secret belong to an owner (the Job), so the garbage collector deletes it with the Job.
    public func setSecretOwner(_ name: String, owner: OwnerReference) async throws -> Secret {
        struct Patch: Encodable {
            struct Meta: Encodable { var ownerReferences: [OwnerReference] }
            var metadata: Meta
        }
        let body = try Self.encoder.encode(Patch(metadata: .init(ownerReferences: [owner])))
        let response = try await raw(
            "PATCH", "\(secretsPath)/\(Self.segment(name))", body: body, contentType: "application/merge-patch+json")
        return try Self.decode(Secret.self, response)
    }

    public func deleteSecret(_ name: String) async throws {
        _ = try await raw("DELETE", "\(secretsPath)/\(Self.segment(name))")
    }

    /// `GET /version`: the server's version fields.
    public func version() async throws -> [String: String] {
        try await send("GET", "/version")
    }

    // MARK: Transport

    static let encoder: JSONEncoder = {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return encoder
    }()
    static let decoder = JSONDecoder()

    private func send<Response: Decodable>(
        _ method: String, _ path: String, query: [(String, String)] = []
    ) async throws -> Response {
        try Self.decode(Response.self, try await raw(method, path, query: query))
    }

    private func send<Body: Encodable, Response: Decodable>(
        _ method: String, _ path: String, query: [(String, String)] = [], body: Body
    ) async throws -> Response {
        try Self.decode(Response.self, try await raw(method, path, query: query, body: try Self.encoder.encode(body)))
    }

    private static func decode<T: Decodable>(_ type: T.Type, _ response: HTTPResponse) throws -> T {
        do {
            return try decoder.decode(T.self, from: Data(response.body))
        } catch {
            throw KubernetesError(
                httpStatus: response.status,
                status: KubernetesStatus(message: "unreadable \(T.self) in the reply: \(error)", reason: "BadReply"))
        }
    }

    /// One exchange; a non-2xx answer becomes a ``KubernetesError``. A 401 with a token file
    /// re-reads the file and tries once more (the kubelet may have just rotated it).
    private func raw(
        _ method: String, _ path: String, query: [(String, String)] = [], body: Data? = nil,
        contentType: String = "application/json"
    ) async throws -> HTTPResponse {
        var response = try await http.perform(
            try await request(method, path, query: query, body: body, contentType: contentType))
        if response.status == 401, let token, token.isFile {
            token.invalidate()
            response = try await http.perform(
                try await request(method, path, query: query, body: body, contentType: contentType))
        }
        guard (200..<300).contains(response.status) else {
            throw Self.failure(status: response.status, body: response.body)
        }
        return response
    }

    private func request(
        _ method: String, _ path: String, query: [(String, String)], body: Data?,
        contentType: String = "application/json", timeout: Duration? = nil
    ) async throws -> HTTPRequest {
        var headers = [("Accept", "application/json")]
        if body != nil { headers.append(("Content-Type", contentType)) }
        if let token { headers.append(("Authorization", "Bearer \(try token.current())")) }
        var url = configuration.server + path
        if !query.isEmpty {
            url +=
                "?" + query.map { "\(Self.queryComponent($0.0))=\(Self.queryComponent($0.1))" }.joined(separator: "&")
        }
        return HTTPRequest(
            method: method, url: url, headers: headers, body: body.map(Array.init), timeout: timeout ?? requestTimeout,
            connectTimeout: .seconds(5))
    }

    static func failure(status: Int, body: [UInt8]) -> KubernetesError {
        let decoded = try? decoder.decode(KubernetesStatus.self, from: Data(body))
        if let decoded, decoded.kind == "Status" || decoded.reason != nil {
            return KubernetesError(httpStatus: status, status: decoded)
        }
        let text = String(decoding: body.prefix(512), as: UTF8.self)
        return KubernetesError(
            httpStatus: status,
            status: KubernetesStatus(message: text.isEmpty ? "HTTP \(status)" : text, reason: nil, code: status))
    }

    private static let unreserved = CharacterSet(
        charactersIn: "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~")

    static func queryComponent(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value
    }

    static func segment(_ value: String) -> String {
        value.addingPercentEncoding(withAllowedCharacters: unreserved) ?? value
    }
}

extension KubernetesStatus {
    init(message: String, reason: String?, code: Int? = nil) {
        self.init(
            kind: "Status", apiVersion: "v1", metadata: nil, status: "Failure", message: message, reason: reason,
            details: nil, code: code)
    }
}

/// The bearer token: fixed, or read from a file and re-read when the file changes (checked at
/// most once a second) or after a 401.
final class TokenSource: Sendable {
    private struct Cached {
        var token: String
        var modified: Date?
        var checkedAt: ContinuousClock.Instant
    }
    private let file: String?
    private let fixed: String?
    private let cached = Mutex<Cached?>(nil)

    init(file: String) {
        self.file = file
        self.fixed = nil
    }

    init(fixed: String) {
        self.file = nil
        self.fixed = fixed
    }

    var isFile: Bool { file != nil }

    func invalidate() { cached.withLock { $0 = nil } }

    func current() throws -> String {
        if let fixed { return fixed }
        guard let file else { return "" }
        let now = ContinuousClock.now
        if let cached = cached.withLock({ $0 }), now - cached.checkedAt < .seconds(1) { return cached.token }
        let modified = (try? FileManager.default.attributesOfItem(atPath: file))?[.modificationDate] as? Date
        if let cached = cached.withLock({ $0 }), cached.modified == modified, modified != nil {
            self.cached.withLock { $0?.checkedAt = now }
            return cached.token
        }
        let token: String
        do {
            token = try String(contentsOfFile: file, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        } catch {
            throw KubernetesConfigurationError("cannot read the token file \(file): \(error.localizedDescription)")
        }
        cached.withLock { $0 = Cached(token: token, modified: modified, checkedAt: now) }
        return token
    }
}
