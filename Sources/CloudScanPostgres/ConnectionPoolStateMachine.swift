/// The pool's bookkeeping as a pure state machine: it decides, the client acts. No I/O here, so
/// every transition is unit-tested directly.
struct ConnectionPoolStateMachine<Connection: AnyObject, Waiter: Hashable> {
    /// What a lease request should do.
    enum LeaseAction: Equatable {
        /// Use this idle connection (after checking it is alive).
        case use(Connection)
        /// A slot is reserved: open a new connection.
        case open
        /// Park the caller until a connection is released.
        case wait
        /// The pool is shut down.
        case fail

        static func == (lhs: Self, rhs: Self) -> Bool {
            switch (lhs, rhs) {
            case (.use(let a), .use(let b)): return a === b
            case (.open, .open), (.wait, .wait), (.fail, .fail): return true
            default: return false
            }
        }
    }

    /// What to do with a connection coming back from a lease.
    enum ReleaseAction: Equatable {
        /// Give it to this parked waiter.
        case handOver(Connection, to: Waiter)
        /// Keep it idle.
        case park
        /// Close it (the pool is shut down).
        case close(Connection)

        static func == (lhs: Self, rhs: Self) -> Bool {
            switch (lhs, rhs) {
            case (.handOver(let a, let w1), .handOver(let b, let w2)): return a === b && w1 == w2
            case (.park, .park): return true
            case (.close(let a), .close(let b)): return a === b
            default: return false
            }
        }
    }

    /// What to do after a slot was freed (a connection discarded or an open failed).
    enum SlotFreedAction: Equatable {
        /// Tell this waiter to open a connection in the freed slot.
        case openFor(Waiter)
        /// Nothing is waiting.
        case none
    }

    let maximumConnections: Int
    private(set) var idle: [Connection] = []
    /// Connections open or being opened (idle + leased + opening).
    private(set) var slotsInUse = 0
    private(set) var waiters: [Waiter] = []
    private(set) var isShutDown = false

    init(maximumConnections: Int) {
        precondition(maximumConnections > 0, "a pool needs at least one connection")
        self.maximumConnections = maximumConnections
    }

    /// A caller wants a connection. `.wait` records the waiter.
    mutating func lease(_ waiter: Waiter) -> LeaseAction {
        if isShutDown { return .fail }
        if let connection = idle.popLast() { return .use(connection) }
        if slotsInUse < maximumConnections {
            slotsInUse += 1
            return .open
        }
        waiters.append(waiter)
        return .wait
    }

    /// A leased (and healthy) connection comes back.
    mutating func release(_ connection: Connection) -> ReleaseAction {
        if isShutDown {
            slotsInUse -= 1
            return .close(connection)
        }
        if !waiters.isEmpty {
            return .handOver(connection, to: waiters.removeFirst())
        }
        idle.append(connection)
        return .park
    }

    /// A leased connection is broken, or opening one failed: its slot is free again.
    mutating func slotFreed() -> SlotFreedAction {
        slotsInUse -= 1
        if isShutDown || waiters.isEmpty { return .none }
        slotsInUse += 1
        return .openFor(waiters.removeFirst())
    }

    /// A parked waiter gave up (its task was cancelled). Returns whether it was still parked.
    mutating func cancelWaiter(_ waiter: Waiter) -> Bool {
        guard let index = waiters.firstIndex(of: waiter) else { return false }
        waiters.remove(at: index)
        return true
    }

    /// Shuts the pool: idle connections to close and waiters to fail.
    mutating func shutDown() -> (close: [Connection], fail: [Waiter]) {
        isShutDown = true
        let closing = idle
        let failing = waiters
        slotsInUse -= idle.count
        idle = []
        waiters = []
        return (closing, failing)
    }
}
