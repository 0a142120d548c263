using EraserWorker.Hosting;

return await WorkerHost.RunAsync(args);
