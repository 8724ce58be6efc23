import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore

/// A Kubernetes API server stand-in for tests (never shipped): the batch/v1 Jobs, v1 pods,
/// pods/log and Secrets subset, with the semantics recorded from a real v1.20 server in
/// shared/kubernetes/recorded/ — defaulted objects, resourceVersion, Status errors (201/409/422/
/// 404/401/403/410), labelSelector, limit/continue, watch (ERROR 410 inside a 200 stream), delete
/// propagation (Background answers a Status; no policy orphans the pods). A Job controller starts a
/// Pending pod and sets `startTime`/`active`; test hooks finish Jobs the way the real controller
/// does, inject faults and compact history.
public final class KubernetesStandIn: Sendable {
    public let cluster: StandInCluster
    public let port: Int
    private let task: Task<Void, any Error>

    /// Tokens (as recorded): `testtoken` is admin; `noaccesstoken` is user `cloudscan-noaccess`, with no RBAC.
    public static let adminToken = "testtoken"
    public static let noAccessToken = "noaccesstoken"

    /// Starts a server on a free loopback port.
    public static func start() async throws -> KubernetesStandIn {
        let cluster = StandInCluster()
        let port = PortBox()
        var logger = Logger(label: "kube-stand-in")
        logger.logLevel = .critical
        let application = Application(
            responder: StandInResponder(cluster: cluster),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: nil),
            onServerRunning: { channel in port.set(channel.localAddress?.port) }, logger: logger)
        let task = Task { try await application.runService(gracefulShutdownSignals: []) }
        // Generous: on 2 cores a parallel test run can keep the server's first accept waiting.
        let deadline = ContinuousClock.now + .seconds(60)
        while port.get() == nil {
            guard ContinuousClock.now < deadline else {
                task.cancel()
                throw POSIXError(.ETIMEDOUT)
            }
            try await Task.sleep(for: .milliseconds(10))
        }
        return KubernetesStandIn(cluster: cluster, port: port.get()!, task: task)
    }

    private init(cluster: StandInCluster, port: Int, task: Task<Void, any Error>) {
        self.cluster = cluster
        self.port = port
        self.task = task
    }

    public var server: String { "http://127.0.0.1:\(port)" }

    public func stop() async {
        task.cancel()
        _ = try? await task.value
    }
}

private final class PortBox: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Int?
    func set(_ port: Int?) { lock.withLock { value = port } }
    func get() -> Int? { lock.withLock { value } }
}

/// A reply the cluster computed: status, body, content type (nil for none).
struct StandInReply: Sendable {
    var status: Int
    var body: Data
    var contentType: String? = "application/json"
    var extraHeaders: [(String, String)] = []
}

/// What a test can make the next matching requests do.
public enum StandInFault: Sendable {
    /// Answer with this status and a matching Status body (500 InternalError, 401 Unauthorized, 429 …).
    case status(Int)
    /// Wait this long, then answer normally (the client's time-out fires first).
    case delay(Duration)
}

struct StandInResponder: HTTPResponder {
    typealias Context = BasicRequestContext
    let cluster: StandInCluster

    func respond(to request: Request, context: Context) async throws -> Response {
        let body = try await request.body.collect(upTo: 4 << 20)
        var query: [String: String] = [:]
        for (key, value) in request.uri.queryParameters { query[String(key)] = String(value) }
        let incoming = StandInRequest(
            method: request.method.rawValue, path: request.uri.path, query: query,
            authorization: request.headers[.authorization], contentType: request.headers[.contentType],
            body: Data(buffer: body))
        if let fault = await cluster.takeFault(incoming) {
            switch fault {
            case .delay(let duration): try await Task.sleep(for: duration)
            case .status(let code):
                return Self.response(await cluster.faultReply(code))
            }
        }
        // Go's strconv.ParseBool, as the server reads it (the Python client sends "True").
        if ["1", "t", "true"].contains(incoming.query["watch"]?.lowercased() ?? "") {
            return try await watch(incoming)
        }
        return Self.response(await cluster.handle(incoming))
    }

    static func response(_ reply: StandInReply) -> Response {
        var headers: HTTPFields = [.cacheControl: "no-cache, private"]
        if let type = reply.contentType { headers[.contentType] = type }
        for (name, value) in reply.extraHeaders {
            if let field = HTTPField.Name(name) { headers[field] = value }
        }
        return Response(
            status: .init(code: reply.status), headers: headers,
            body: reply.body.isEmpty ? .init() : .init(byteBuffer: ByteBuffer(bytes: reply.body)))
    }

    private func watch(_ request: StandInRequest) async throws -> Response {
        let start = await cluster.startWatch(request)
        switch start {
        case .reply(let reply): return Self.response(reply)
        case .stream(let initial, let live, let id, let closeAtOnce):
            let cluster = cluster
            return Response(
                status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-cache, private"],
                body: ResponseBody { writer in
                    for line in initial { try await writer.write(ByteBuffer(bytes: line)) }
                    if !closeAtOnce {
                        // The cluster ends `live` at the watch's timeoutSeconds (or when stopped).
                        for await line in live { try await writer.write(ByteBuffer(bytes: line)) }
                    }
                    await cluster.endWatch(id)
                    try await writer.finish(nil)
                })
        }
    }
}

struct StandInRequest: Sendable {
    var method: String
    var path: String
    var query: [String: String]
    var authorization: String?
    var contentType: String?
    var body: Data
}
