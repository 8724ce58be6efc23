import CloudScanCore
import CloudScanMetrics
import CloudScanPostgres
import Foundation
import HTTPTypes
import Hummingbird

/// An RFC 9457 problem: every error the HTTP API answers, as `application/problem+json`.
public struct Problem: Error, HTTPResponseError, Sendable {
    public var status: HTTPResponse.Status
    public var title: String
    public var detail: String
    /// The request field at fault (`scan_types`, `artifact.url`, `Idempotency-Key`, …).
    public var field: String?
    public var retryAfterSeconds: Int?
    /// For 405: the methods the resource allows.
    public var allow: String?

    public init(
        _ status: HTTPResponse.Status, title: String, detail: String, field: String? = nil,
        retryAfterSeconds: Int? = nil, allow: String? = nil
    ) {
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field
        self.retryAfterSeconds = retryAfterSeconds
        self.allow = allow
    }

    /// The service layer's errors, mapped to HTTP only here, at the edge.
    public init(_ error: ScanServiceError) {
        switch error.code {
        case .invalidArgument:
            self.init(.badRequest, title: "Invalid request", detail: error.message, field: error.field)
        case .notFound: self.init(.notFound, title: "Not found", detail: error.message)
        case .conflict: self.init(.conflict, title: "Conflict", detail: error.message, field: error.field)
        case .failedPrecondition: self.init(.conflict, title: "Not possible in this state", detail: error.message)
        case .resourceExhausted:
            self.init(
                .tooManyRequests, title: "Too many queued scans", detail: error.message,
                retryAfterSeconds: error.retryAfterSeconds)
        case .permissionDenied: self.init(.forbidden, title: "Forbidden", detail: error.message)
        case .unavailable: self.init(.serviceUnavailable, title: "Unavailable", detail: error.message)
        }
    }

    public func response(from request: Request, context: some RequestContext) throws -> Response {
        var body: [String: Any] = [
            "type": "about:blank", "title": title, "status": Int(status.code), "detail": detail,
            "instance": request.uri.path,
        ]
        if let field {
            body["field"] = field
            body["errors"] = [["field": field, "detail": detail]]
        }
        let data = try JSONSerialization.data(withJSONObject: body, options: [.sortedKeys, .withoutEscapingSlashes])
        var headers: HTTPFields = [.contentType: "application/problem+json"]
        if let retryAfterSeconds { headers[.retryAfter] = String(retryAfterSeconds) }
        if status == .unauthorized { headers[.wwwAuthenticate] = "Bearer" }
        if let allow { headers[.allow] = allow }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

/// Answers any error that is not already an HTTP response as a 500 problem (logged, never echoed).
struct ProblemMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        do {
            return try await next(request, context)
        } catch let error as any HTTPResponseError {
            throw error
        } catch let error as PostgresError where error.isDataError {
            // The request's values, refused by the store (a check the validation missed): the
            // caller's fault, so a 400, never a 500 — logged so the missing check gets written.
            context.logger.warning("request data refused by PostgreSQL", metadata: ["error": "\(error)"])
            throw Problem(.badRequest, title: "Invalid request", detail: "a value in the request was refused")
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            throw Problem(.internalServerError, title: "Internal error", detail: "the request could not be completed")
        }
    }
}

/// Counts each request by route pattern and status, and times it (`cloudscan_api_requests_total`,
/// `cloudscan_api_request_duration_seconds`).
struct MetricsMiddleware<Context: RequestContext>: RouterMiddleware {
    let metrics: FleetMetrics

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let started = ContinuousClock.now
        var status = 500
        defer {
            let route = context.endpointPath ?? "unmatched"
            if route != "/metrics" {
                metrics.request(
                    transport: "http", route: "\(request.method.rawValue) \(route)", code: String(status),
                    duration: ContinuousClock.now - started)
            }
        }
        do {
            let response = try await next(request, context)
            status = response.status.code
            return response
        } catch let error as any HTTPResponseError {
            status = error.status.code
            throw error
        }
    }
}

/// W3C Trace Context per request: the caller's `traceparent` continued (a new span of its trace),
/// or a new trace; the request's work — logs, the scan row, its outbox messages — carries it, and
/// the response names it in `traceparent`.
struct TraceMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws
        -> Response
    {
        let trace =
            request.headers[HTTPField.Name("traceparent")!].flatMap(TraceContext.init(traceparent:))?.child()
            ?? TraceContext.root()
        var response = try await LogContext.$late.withValue(LogContext.Late()) {
            try await LogContext.with(
                ["http_method": request.method.rawValue, "http_path": request.uri.path], trace: trace
            ) {
                try await next(request, context)
            }
        }
        response.headers[HTTPField.Name("traceparent")!] = trace.traceparent
        return response
    }
}
