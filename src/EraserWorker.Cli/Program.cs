using EraserWorker.Cli;

return await EraserCommandLine.RunAsync(args);
