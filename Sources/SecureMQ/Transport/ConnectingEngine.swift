/// The owner-thread side of a role that connects to a server (client, worker, plain connection).
/// `SendableMetatype`: the engine type is named inside closures that run on the owner thread.
protocol ConnectingEngine: AnyObject, SendableMetatype {
    var connectWaiters: Waiters<Bool> { get }
    /// Resumes `continuation` once connected (or with the connection's failure).
    func waitConnected(id: Int, _ continuation: Waiters<Bool>.Continuation)
    /// Closes the socket; runs on the owner thread when it stops.
    func close()
}

extension SocketThread {
    /// Starts an owner thread, builds `make`'s engine on it (closed when the thread stops), and
    /// waits until the engine has connected: the one way a connecting role comes to life.
    /// - Throws: ``SecureMQError`` from building the engine or from its connection (the thread
    ///   is stopped then).
    static func startConnected<Engine: ConnectingEngine>(
        name: String, _ make: @escaping (SocketThread) throws(SecureMQError) -> Engine
    ) async throws(SecureMQError) -> (SocketThread, Engine) {
        let thread = try SocketThread(name: name)
        let engine: Engine
        do {
            engine = try thread.runAndWait { () throws(SecureMQError) in
                let engine = try make(thread)
                thread.onStop { engine.close() }
                return engine
            }
        } catch {
            thread.requestStop()
            throw error
        }
        // Confined to `thread`: the closures below run there.
        let box = UncheckedBox(engine)
        do {
            let _: Bool = try await thread.wait(register: { id, continuation in
                box.value.waitConnected(id: id, continuation)
            }, cancel: { id in box.value.connectWaiters.cancel(id: id) })
        } catch {
            thread.requestStop()
            throw error
        }
        return (thread, engine)
    }
}
