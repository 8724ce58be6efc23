import GRPCCore

/// `grpc.health.v1.Health`: SERVING while the readiness checks (PostgreSQL, the broker) pass.
/// Known services: "" (the server) and `cloudscan.v1.ScanService`; others are NOT_FOUND.
public struct HealthService: Grpc_Health_V1_Health.SimpleServiceProtocol {
    static let known: Set<String> = ["", "cloudscan.v1.ScanService"]
    let readiness: @Sendable () async -> [String: Bool]
    let watchInterval: Duration

    public init(watchInterval: Duration = .seconds(2), readiness: @escaping @Sendable () async -> [String: Bool]) {
        self.readiness = readiness
        self.watchInterval = watchInterval
    }

    func status() async -> Grpc_Health_V1_HealthCheckResponse {
        var response = Grpc_Health_V1_HealthCheckResponse()
        response.status = await readiness().values.allSatisfy { $0 } ? .serving : .notServing
        return response
    }

    public func check(request: Grpc_Health_V1_HealthCheckRequest, context: ServerContext) async throws
        -> Grpc_Health_V1_HealthCheckResponse
    {
        guard Self.known.contains(request.service) else {
            throw RPCError(code: .notFound, message: "unknown service '\(request.service)'")
        }
        return await status()
    }

    /// Sends the status now and again whenever it changes, until the caller goes away.
    public func watch(
        request: Grpc_Health_V1_HealthCheckRequest, response: RPCWriter<Grpc_Health_V1_HealthCheckResponse>,
        context: ServerContext
    ) async throws {
        guard Self.known.contains(request.service) else {
            var unknown = Grpc_Health_V1_HealthCheckResponse()
            unknown.status = .serviceUnknown
            try await response.write(unknown)
            return
        }
        var last: Grpc_Health_V1_HealthCheckResponse.ServingStatus?
        while !Task.isCancelled {
            let current = await status()
            if current.status != last {
                try await response.write(current)
                last = current.status
            }
            try await Task.sleep(for: watchInterval)
        }
    }
}
