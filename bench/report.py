def write_report(results, path):
    return path
