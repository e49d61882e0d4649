import sys
print("hello from pyrunner", sys.argv[1:])
