using EraserWorker.Benchmarks;

return args.Contains("--soak") ? await SoakBenchmark.RunAsync(args) : await WorkerBenchmark.RunAsync(args);
